#!/bin/sh
# /init of the kernel-matrix initramfs (busybox sh, PID 1): mount the pseudo file systems,
# bring lo up, run the checks (checks.sh), print their markers on the serial console, and
# power off. The host (xtask kernels) parses the console log.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/local/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# Keep kernel messages off the console from here on: they would cut marker lines.
echo 1 >/proc/sys/kernel/printk
echo "WSM-BOOTED $(uname -r)"

/usr/sbin/ip link set lo up
export WSM=/usr/local/bin/ws-monitor
export PEER="/usr/local/bin/xtask ws-peer"
export TC=/usr/sbin/tc
export BPFTOOL=/usr/sbin/bpftool
export SCRATCH=/tmp/wsm
sh /checks.sh

echo "WSM-LINE dmesg.tail begin"
dmesg | tail -n 40 | while IFS= read -r l; do echo "WSM-LINE dmesg.tail $l"; done
echo "WSM-POWEROFF"
poweroff -f
