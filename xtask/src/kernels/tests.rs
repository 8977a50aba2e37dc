//! Tests of [`super`].

use super::*;

#[test]
fn finds_the_main_archive_in_deb822_and_one_line_sources() {
    let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                  Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
    let sources = parse_deb822_sources(deb822);
    assert_eq!(sources.len(), 2);
    assert_eq!(pick_archive(&sources, Some("bookworm")).as_deref(), Some("http://mirror.example/debian"));
    // Security first in the file: still the main archive.
    let mut reversed = parse_deb822_sources(deb822);
    reversed.reverse();
    assert_eq!(pick_archive(&reversed, Some("bookworm")).as_deref(), Some("http://mirror.example/debian"));
    let one_line = "deb https://other.example/apt cloud-sdk-bookworm main\n\
                    deb [signed-by=/k.gpg arch=amd64] http://archive.example/debian/ bookworm main contrib\n\
                    deb-src http://src.example/debian bookworm main\n";
    let sources = parse_one_line_sources(one_line);
    assert_eq!(sources.len(), 2);
    assert_eq!(pick_archive(&sources, Some("bookworm")).as_deref(), Some("http://archive.example/debian"));
    assert_eq!(pick_archive(&sources, None).as_deref(), Some("http://archive.example/debian"));
    assert_eq!(
        pick_archive(
            &parse_one_line_sources("deb http://x/debian-security bookworm-security main\n"),
            Some("bookworm")
        ),
        None
    );
}

#[test]
fn resolves_the_versioned_image_and_module_closure() {
    let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-50-amd64\n";
    assert_eq!(versioned_image(depends).as_deref(), Some("linux-image-6.1.0-50-amd64"));
    let dep = "kernel/net/sched/act_ct.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz\n\
               kernel/net/sched/sch_ingress.ko:\nkernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko\n";
    let closure = module_closure(dep);
    assert!(closure.contains("kernel/net/sched/sch_ingress.ko"));
    assert!(closure.contains("kernel/lib/libcrc32c.ko.xz"));
    assert!(!closure.iter().any(|m| m.contains("ext4") || m.contains("mbcache")));
}

/// A console as checks.sh prints it for a netlink kernel where everything went right,
/// with `f_during` as the ingress filters while the monitor ran next to foreign ones.
fn console(f_during: &[&str]) -> String {
    let (client, server) = ws_peer::totals(PORT);
    let report = |attach: &str| {
        serde_json::json!({
            "connections": 1, "upgrades_ok": 1,
            "frames": {"client": {"text": 1, "binary": 1, "ping": 1, "close": 1, "pong": 0},
                       "server": {"text": 2, "binary": 0, "ping": 0, "close": 1, "pong": 1}},
            "violations": {"bad_handshake": 0},
            "capture": {"packets": 18, "bytes_client": client - ws_peer::SKIPPED_CLIENT, "bytes_server": server,
                        "skipped_client": ws_peer::SKIPPED_CLIENT, "skipped_server": 0,
                        "ring_drops": 0, "gaps": 0, "bytes_lost": 0},
            "kernel": {"packets_seen": 18},
            "attach": {"mode": attach},
            "privileges": {"kept": ["CAP_NET_ADMIN"], "seccomp": true},
            "peak_rss_bytes": 40_000_000,
        })
        .to_string()
    };
    let ours =
        "filter protocol all pref 49152 bpf chain 0 handle 0x77736d31 ws_monitor_ingress direct-action not_in_hw id 15";
    let bpf = "filter protocol all pref 7 bpf chain 0 handle 0x7 not_in_hw bytecode '1,6 0 0 0'";
    let mut c = String::from("WSM-RESULT kernel 6.1.0-50-amd64\nWSM-RESULT base.progs []\n");
    for step in ["a", "b", "e", "f"] {
        for (k, v) in [("started", "yes"), ("exit", "0"), ("client_exit", "0"), ("server_exit", "0")] {
            c += &format!("WSM-RESULT {step}.{k} {v}\n");
        }
        c += &format!("WSM-RESULT {step}.report {}\n", report("netlink"));
    }
    c += "WSM-RESULT c.progs []\nWSM-RESULT d.started yes\nWSM-RESULT d.orphan yes\n";
    c += &format!("WSM-LINE d.killed.filter_ingress {ours}\n");
    let prog = |cnt: u64| format!(r#"[{{"id":15,"name":"ws_monitor_ingr","run_cnt":{cnt},"run_time_ns":900}}]"#);
    c += &format!("WSM-RESULT d.progs_before {}\nWSM-RESULT d.progs_after {}\n", prog(0), prog(18));
    let dump = r#"[{"key":1,"values":[{"cpu":0,"value":40}]},{"key":2,"values":[{"cpu":0,"value":900}]}]"#;
    c += &format!("WSM-RESULT d.counters_before {dump}\nWSM-RESULT d.counters_after {dump}\n");
    c += "WSM-RESULT d.client_exit 0\nWSM-RESULT d.server_exit 0\n";
    c += "WSM-LINE e.stderr WARN removed 1 stale ws-monitor filter(s) from lo\n";
    c += "WSM-RESULT f.add_qdisc.rc 0\nWSM-LINE f.before.qdisc qdisc clsact ffff: parent ffff:fff1\n";
    c += &format!("WSM-LINE f.before.filter_ingress {bpf}\nWSM-LINE f.after.filter_ingress {bpf}\n");
    c += "WSM-LINE f.after.qdisc qdisc clsact ffff: parent ffff:fff1\n";
    for l in f_during {
        c += &format!("WSM-LINE f.during.filter_ingress {l}\n");
    }
    c += "WSM-RESULT g.started yes\nWSM-RESULT g.detach.rc 0\nWSM-RESULT g.after.progs []\nWSM-DONE\n";
    c
}

fn run_of(console: &str) -> Run {
    Run { label: "6.1".into(), markers: Markers::parse(console), seconds: 30.0, error: None }
}

#[test]
fn judges_a_clean_netlink_run() {
    let text = console(&[]);
    let run = run_of(&text);
    let reference = normalise(&serde_json::from_str(run.markers.result("a.report").unwrap()).unwrap());
    let row = evaluate(&run, Some(&reference));
    assert_eq!(row.failures, Vec::<String>::new());
    assert_eq!(row.mode, "netlink");
    assert_eq!(row.kept, "CAP_NET_ADMIN");
    assert_eq!(row.kill9, "filter stays, dormant (ran 18 times, copied nothing); detach ok");
    assert_eq!(row.restart, "exact, stale filter removed");
    assert_eq!(row.foreign, "yes (1 foreign filter)");
}

#[test]
fn judges_leftovers_a_live_orphan_and_a_changed_report() {
    let text = console(&[])
        .replace("WSM-RESULT c.progs []", r#"WSM-RESULT c.progs [{"id":20,"name":"ws_monitor_ingr"}]"#)
        .replace(
            r#"WSM-RESULT d.counters_after [{"key":1,"values":[{"cpu":0,"value":40}]}"#,
            r#"WSM-RESULT d.counters_after [{"key":1,"values":[{"cpu":0,"value":58}]}"#,
        )
        .replace("WSM-LINE e.stderr WARN removed 1 stale ws-monitor filter(s) from lo\n", "");
    let mut run = run_of(&text);
    // b saw one connection more than the host.
    let b = run.markers.results.get_mut("b.report").unwrap();
    *b = b.replace(r#""connections":1"#, r#""connections":2"#);
    let reference = normalise(&serde_json::from_str(run.markers.result("a.report").unwrap()).unwrap());
    let row = evaluate(&run, Some(&reference));
    let all = row.failures.join("\n");
    assert!(all.contains("b: connections is 2 (expected 1)"), "{all}");
    assert!(all.contains("report differs from the host kernel's: connections: 2 vs host 1"), "{all}");
    assert!(all.contains("still attached: program ws_monitor_ingr (id 20)"), "{all}");
    assert!(all.contains("not dormant 6 s after kill -9: it matched 18 packets"), "{all}");
    assert!(all.contains("no stderr line about removing the stale ws-monitor filter"), "{all}");
    assert_eq!(row.failures.len(), 3, "{all}");
}

#[test]
fn explains_a_filter_behind_a_foreign_one() {
    let ours = "filter protocol all pref 49152 bpf chain 0 handle 0x1 ws_monitor_ingress direct-action";
    let matchall = "filter protocol all pref 8 matchall chain 0 handle 0x8";
    let mut run = run_of(&console(&[matchall, ours]));
    let reference = normalise(&serde_json::from_str(run.markers.result("a.report").unwrap()).unwrap());
    let f = run.markers.results.get_mut("f.report").unwrap();
    *f = f.replace(r#""packets":18"#, r#""packets":0"#);
    let row = evaluate(&run, Some(&reference));
    assert_eq!(row.foreign, "kept, but capture not exact");
    assert_eq!(row.failures.len(), 1);
    assert!(row.failures[0].contains("pref 49152, behind the foreign filters at pref 8"), "{}", row.failures[0]);
    assert!(row.failures[0].contains("f: captured nothing"), "{}", row.failures[0]);
}

#[test]
fn parses_ldd_markers_and_bpftool_dumps() {
    let ldd = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
    assert_eq!(
        ldd_paths(ldd),
        vec![PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
    );
    let console = "[    1.0] boot\r\nWSM-RESULT a.exit 0\r\nnoiseWSM-LINE a.stderr hello world\nWSM-LINE a.stderr two\nWSM-DONE\n";
    let m = Markers::parse(console);
    assert_eq!(m.result("a.exit"), Some("0"));
    assert_eq!(m.lines("a.stderr"), ["hello world", "two"]);
    assert!(m.done);
    let dump = r#"[{"key":["0x01","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x02","0x01","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x03","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}]}]"#;
    assert_eq!(counters(Some(dump)).unwrap().get(&1), Some(&(0x102 + 3)));
    let formatted =
        r#"[{"key":1,"values":[{"cpu":0,"value":5}],"formatted":{"key":1,"values":[{"cpu":0,"value":5}]}}]"#;
    assert_eq!(counters(Some(formatted)).unwrap().get(&1), Some(&5));
    assert_eq!(version("6.12.117+deb13-amd64"), Some((6, 12)));
    assert_eq!(version("5.10.0-32-amd64"), Some((5, 10)));
}
