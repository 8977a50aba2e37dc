#!/bin/sh
# The kernel-matrix checks (xtask kernels), the same under QEMU (run by init.sh) and on the
# host (in a private network namespace): ws-monitor on lo, port 8001, around a scripted
# WebSocket exchange (xtask ws-peer), and what stays attached after clean exits, kill -9,
# a restart, a foreign clsact qdisc and `ws-monitor detach`.
#
# Environment: WSM (ws-monitor), PEER (the ws-peer command), TC (iproute2's tc), BPFTOOL,
# SCRATCH (a writable directory). Called by full path: busybox sh prefers its own applets.
# The PIDs of what it starts go to $SCRATCH/pids (the host kills them if it times out).
# It prints facts only; the host decides what passes. Markers, one per line:
#   WSM-RESULT KEY VALUE   one value (JSON on one line where the tool gives JSON)
#   WSM-LINE KEY LINE      one line of a command's output, in order
# KEY.rc follows every command run through `lines`.

PORT=8001
IFACE=lo
mkdir -p "$SCRATCH" || exit 1
STARTED=""

result() {
    key=$1
    shift
    echo "WSM-RESULT $key $*"
}

file_lines() {
    while IFS= read -r l || [ -n "$l" ]; do
        echo "WSM-LINE $1 $l"
    done <"$2"
}

# lines KEY COMMAND...: runs COMMAND, prints its output (stdout and stderr) and exit code.
lines() {
    key=$1
    shift
    "$@" >"$SCRATCH/out" 2>&1
    rc=$?
    file_lines "$key" "$SCRATCH/out"
    result "$key.rc" "$rc"
}

# JSON output of a command on one line.
one_line() {
    "$@" 2>/dev/null | tr -d '\n'
}

# What is attached to lo, and which BPF programs are loaded.
snapshot() {
    lines "$1.qdisc" "$TC" qdisc show dev "$IFACE"
    lines "$1.filter_ingress" "$TC" filter show dev "$IFACE" ingress
    lines "$1.filter_egress" "$TC" filter show dev "$IFACE" egress
    lines "$1.net" "$BPFTOOL" net show dev "$IFACE"
    # The kernel frees the programs of an exited process asynchronously (the tail-call
    # table's, after its map): give it up to 3 s before listing what is loaded.
    i=0
    while [ "$i" -lt 30 ] && "$BPFTOOL" prog show 2>/dev/null | grep -q ws_monitor; do
        sleep 0.1
        i=$((i + 1))
    done
    result "$1.progs" "$(one_line "$BPFTOOL" -j prog show)"
}

# start_wsm NAME [IFACE]: ws-monitor in the background (on lo, or on IFACE); waits until
# it says it is capturing.
start_wsm() {
    name=$1
    # The kernel program's log lines on: the verifier then checks the code that writes
    # them too, and the debug log says how many instructions each program took.
    WS_MONITOR_LOG=info,ws_monitor::kernel=debug \
        "$WSM" --iface "${2:-$IFACE}" --port "$PORT" --no-tui --json >"$SCRATCH/$name.json" 2>"$SCRATCH/$name.err" &
    WSM_PID=$!
    STARTED="$STARTED $WSM_PID"
    echo "$WSM_PID" >>"$SCRATCH/pids"
    i=0
    while [ "$i" -lt 600 ]; do
        if grep -q "capturing TCP port" "$SCRATCH/$name.err"; then
            result "$name.started" yes
            return 0
        fi
        kill -0 "$WSM_PID" 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    result "$name.started" no
    return 1
}

# stop_wsm NAME SIGNAL: signals the instance started last, waits for it, prints its exit
# code, its JSON report and its stderr.
stop_wsm() {
    kill -"$2" "$WSM_PID" 2>/dev/null
    wait "$WSM_PID"
    result "$1.exit" "$?"
    result "$1.report" "$(tr -d '\n' <"$SCRATCH/$1.json")"
    file_lines "$1.stderr" "$SCRATCH/$1.err"
}

# exchange NAME: one scripted WebSocket connection on port 8001. The client connects once
# the server is listening (a refused attempt would be one more connection in the report).
exchange() {
    rm -f "$SCRATCH/ready"
    $PEER server --port "$PORT" --ready "$SCRATCH/ready" >"$SCRATCH/$1.server" 2>&1 &
    server=$!
    echo "$server" >>"$SCRATCH/pids"
    i=0
    while [ ! -e "$SCRATCH/ready" ] && [ "$i" -lt 600 ] && kill -0 "$server" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    $PEER client --port "$PORT" >"$SCRATCH/$1.client" 2>&1
    result "$1.client_exit" "$?"
    wait "$server"
    result "$1.server_exit" "$?"
    file_lines "$1.peer" "$SCRATCH/$1.client"
    file_lines "$1.peer" "$SCRATCH/$1.server"
}

# capture NAME SIGNAL [IFACE]: start, exchange, stop with SIGNAL.
capture() {
    if start_wsm "$1" "$3"; then
        exchange "$1"
        # Let the last ACKs pass the hook before the stop.
        sleep 1
    fi
    stop_wsm "$1" "$2"
}

# kill9 NAME: start and kill -9.
kill9() {
    start_wsm "$1"
    kill -9 "$WSM_PID" 2>/dev/null
    wait "$WSM_PID"
    result "$1.exit" "$?"
    file_lines "$1.stderr" "$SCRATCH/$1.err"
    sleep 1
}

ws_filter_attached() {
    { "$TC" filter show dev "$IFACE" ingress; "$TC" filter show dev "$IFACE" egress; } 2>/dev/null | grep -q ws_monitor
}

result kernel "$(uname -r)"
snapshot base

# a, b: exact capture, stopped by SIGTERM and by SIGINT; b with `--iface any` (lo is all
# there is: the same report, through the program's several-interfaces path); c: nothing
# left after a clean exit.
capture a TERM
snapshot a.after
capture b INT any
snapshot c

# d: kill -9; an orphan left by a netlink attach must go dormant (liveness older than ~5 s).
kill9 d
snapshot d.killed
if ws_filter_attached; then
    result d.orphan yes
    stats_before=$(cat /proc/sys/kernel/bpf_stats_enabled)
    echo 1 >/proc/sys/kernel/bpf_stats_enabled
    sleep 6
    result d.progs_before "$(one_line "$BPFTOOL" -j prog show)"
    result d.counters_before "$(one_line "$BPFTOOL" -j map dump name COUNTERS)"
    exchange d
    sleep 1
    result d.progs_after "$(one_line "$BPFTOOL" -j prog show)"
    result d.counters_after "$(one_line "$BPFTOOL" -j map dump name COUNTERS)"
    echo "$stats_before" >/proc/sys/kernel/bpf_stats_enabled
else
    result d.orphan no
fi

# e: restart on top of the killed instance; exact again, and nothing left afterwards.
capture e TERM
snapshot e.after

# f: a foreign clsact qdisc with foreign filters stays untouched.
lines f.add_qdisc "$TC" qdisc add dev "$IFACE" clsact
lines f.add_bpf "$TC" filter add dev "$IFACE" ingress prio 7 handle 7 protocol all bpf bytecode "1,6 0 0 0,"
lines f.add_matchall "$TC" filter add dev "$IFACE" ingress prio 8 handle 8 protocol all matchall action pass
snapshot f.before
if start_wsm f; then
    snapshot f.during
    exchange f
    sleep 1
fi
stop_wsm f TERM
snapshot f.after
lines f.del_qdisc "$TC" qdisc del dev "$IFACE" clsact

# g: `ws-monitor detach` after kill -9 removes what was left.
kill9 g
snapshot g.killed
lines g.detach "$WSM" detach --iface "$IFACE"
snapshot g.after

# Nothing of ours keeps running.
for pid in $STARTED; do
    kill -9 "$pid" 2>/dev/null
done
echo "WSM-DONE"
