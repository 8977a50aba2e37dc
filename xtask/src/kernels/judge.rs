//! Judging a run: the facts a guest or the host printed, against the host's reference
//! report and what must (not) stay attached.

use super::*;

/// The report without what depends on timing, on the kernel or on the machine: the
/// kernel counters, the attach details and the privileges kept (both judged on their
/// own), the monitor's own memory, the default memory limit (an eighth of the machine's
/// memory at most), and the packet count (`capture.packets`, `reassembly.segments`).
pub(super) fn normalise(report: &Value) -> Value {
    let mut r = report.clone();
    if let Some(obj) = r.as_object_mut() {
        obj.remove("kernel");
        obj.remove("attach");
        obj.remove("privileges");
        obj.remove("peak_rss_bytes");
        if let Some(capture) = obj.get_mut("capture").and_then(Value::as_object_mut) {
            capture.remove("packets");
        }
        if let Some(budgets) = obj.get_mut("budgets").and_then(Value::as_object_mut) {
            budgets.remove("memory_limit");
        }
        if let Some(reassembly) = obj.get_mut("reassembly").and_then(Value::as_object_mut) {
            // The packet count again (delayed ACKs may come alone or not).
            reassembly.remove("segments");
        }
    }
    r
}

/// Paths where two JSON values differ (at most a few).
pub(super) fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= 4 {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => json_diff(va, vb, &p, out),
                    (va, vb) => out.push(format!("{p}: {} vs host {}", show(va), show(vb))),
                }
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs host {b}")),
        _ => {}
    }
}

pub(super) fn show(v: Option<&Value>) -> String {
    v.map_or("absent".into(), Value::to_string)
}

/// The last stderr line worth quoting (an error if there is one).
pub(super) fn stderr_reason(m: &Markers, step: &str) -> String {
    let lines = m.lines(&format!("{step}.stderr"));
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error") || l.contains("Error"))
        .or_else(|| lines.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "no output".into())
}

/// Problems of one exact-capture step (empty: the report is exact).
pub(super) fn capture_problems(m: &Markers, step: &str, reference: Option<&Value>) -> Vec<String> {
    let mut p = Vec::new();
    if m.result(&format!("{step}.started")) != Some("yes") {
        p.push(format!("{step}: ws-monitor did not start capturing: {}", stderr_reason(m, step)));
        return p;
    }
    let exit = m.result(&format!("{step}.exit")).unwrap_or("?");
    if exit != "0" {
        p.push(format!("{step}: ws-monitor exited {exit}: {}", stderr_reason(m, step)));
    }
    for side in ["client", "server"] {
        let rc = m.result(&format!("{step}.{side}_exit")).unwrap_or("?");
        if rc != "0" {
            let why =
                m.lines(&format!("{step}.peer")).iter().find(|l| l.contains("error")).cloned().unwrap_or_default();
            p.push(format!("{step}: the WebSocket {side} exited {rc} {why}"));
        }
    }
    let Some(report) = m.result(&format!("{step}.report")).and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
        p.push(format!("{step}: no JSON report"));
        return p;
    };
    p.extend(report_problems(&report).into_iter().map(|e| format!("{step}: {e}")));
    match reference {
        Some(reference) => {
            let mine = normalise(&report);
            if serde_json::to_string(&mine).ok() != serde_json::to_string(reference).ok() {
                let mut diffs = Vec::new();
                json_diff(&mine, reference, "", &mut diffs);
                p.push(format!("{step}: report differs from the host kernel's: {}", diffs.join(", ")));
            }
        }
        None => p.push(format!("{step}: no host reference report to compare with")),
    }
    p
}

/// What the exchange's report must say on any kernel.
pub(super) fn report_problems(report: &Value) -> Vec<String> {
    let (client, server) = ws_peer::totals(PORT);
    let mut p = Vec::new();
    let num = |path: &str| path.split('.').try_fold(report, |v, k| v.get(k)).and_then(Value::as_u64);
    if num("capture.packets") == Some(0) {
        let seen = num("kernel.packets_seen").map_or("?".into(), |n| n.to_string());
        return vec![format!("captured nothing (0 packets; the program saw {seen})")];
    }
    // Header-only capture (the default) leaves out the client's 200-byte binary payload
    // past its first 64 bytes: delivered and skipped bytes add up to the streams.
    let both = |side: &str| {
        num(&format!("capture.bytes_{side}")).zip(num(&format!("capture.skipped_{side}"))).map(|(a, b)| a + b)
    };
    for (side, n) in [("client", client), ("server", server)] {
        if both(side) != Some(n) {
            p.push(format!(
                "capture.bytes_{side} + skipped_{side} is {} (expected {n})",
                both(side).map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    let want = [
        ("capture.skipped_client", ws_peer::SKIPPED_CLIENT),
        ("capture.skipped_server", 0),
        ("capture.ring_drops", 0),
        ("capture.gaps", 0),
        ("capture.bytes_lost", 0),
        ("connections", 1),
        ("upgrades_ok", 1),
        ("frames.client.text", 1),
        ("frames.client.binary", 1),
        ("frames.client.ping", 1),
        ("frames.client.close", 1),
        ("frames.server.text", 2),
        ("frames.server.pong", 1),
        ("frames.server.close", 1),
    ];
    for (path, n) in want {
        if num(path) != Some(n) {
            p.push(format!("{path} is {} (expected {n})", num(path).map_or("absent".into(), |v| v.to_string())));
        }
    }
    let violations: u64 =
        report.get("violations").and_then(Value::as_object).map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
    if violations != 0 {
        p.push(format!("{violations} violations reported"));
    }
    p
}

/// BPF programs in a `bpftool -j prog show` dump: (id, name, run_cnt, run_time_ns).
pub(super) fn programs(json: Option<&str>) -> Vec<(u64, String, u64, u64)> {
    let Some(v) = json.and_then(|j| serde_json::from_str::<Value>(j).ok()) else { return Vec::new() };
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let id = p.get("id")?.as_u64()?;
                    let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                    let cnt = p.get("run_cnt").and_then(Value::as_u64).unwrap_or(0);
                    let ns = p.get("run_time_ns").and_then(Value::as_u64).unwrap_or(0);
                    Some((id, name, cnt, ns))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Little-endian number from bpftool's hex byte list (["0x01","0x00",...]) or a number.
pub(super) fn bpftool_number(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let bytes = v.as_array()?;
    bytes.iter().rev().try_fold(0u64, |acc, b| {
        let b = u64::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()?;
        Some(acc << 8 | b)
    })
}

/// Per-key sums over CPUs of a `bpftool -j map dump` of a per-CPU array.
pub(super) fn counters(json: Option<&str>) -> Option<BTreeMap<u64, u64>> {
    let v: Value = serde_json::from_str(json?).ok()?;
    let mut out = BTreeMap::new();
    for entry in v.as_array()? {
        let entry = entry.get("formatted").unwrap_or(entry);
        let key = bpftool_number(entry.get("key")?)?;
        let sum: u64 =
            entry.get("values")?.as_array()?.iter().filter_map(|c| c.get("value").and_then(bpftool_number)).sum();
        *out.entry(key).or_default() += sum;
    }
    Some(out)
}

/// ws-monitor's leftovers in a snapshot: its filters, its programs (other than those
/// loaded before the checks began) and, when `clsact_is_ours`, any clsact qdisc.
/// `baseline` is None where loaded programs say nothing about this run: on the host,
/// other processes (tests in other namespaces) load ws-monitor programs too, and TCX
/// links, which this bpftool cannot list per device, end with their process anyway.
pub(super) fn leftovers(
    m: &Markers,
    snap: &str,
    baseline: Option<&BTreeSet<u64>>,
    clsact_is_ours: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if clsact_is_ours && m.lines(&format!("{snap}.qdisc")).iter().any(|l| l.contains("clsact")) {
        out.push("the clsact qdisc".to_string());
    }
    for hook in ["ingress", "egress"] {
        if m.lines(&format!("{snap}.filter_{hook}")).iter().any(|l| l.contains("ws_monitor")) {
            out.push(format!("a ws-monitor filter on {hook}"));
        }
    }
    let Some(baseline) = baseline else { return out };
    for (id, name, _, _) in programs(m.result(&format!("{snap}.progs"))) {
        if name.starts_with("ws_monitor") && !baseline.contains(&id) {
            out.push(format!("program {name} (id {id})"));
        }
    }
    out
}

/// Filter entries that are not ws-monitor's (lines with a handle).
pub(super) fn foreign_filters(m: &Markers, snap: &str) -> BTreeSet<String> {
    m.lines(&format!("{snap}.filter_ingress"))
        .iter()
        .chain(m.lines(&format!("{snap}.filter_egress")))
        .filter(|l| l.starts_with("filter ") && l.contains(" handle ") && !l.contains("ws_monitor"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `pref N` of a `tc filter show` line.
pub(super) fn pref(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "pref")?;
    words.next()?.parse().ok()
}

/// Where ws-monitor's netlink filter sat among the foreign ones while it ran, when a
/// foreign filter ran first: one whose verdict ends classification (matchall's `action
/// pass`) hides every packet from the filters behind it.
pub(super) fn priority_hint(m: &Markers) -> Option<String> {
    let lines = m.lines("f.during.filter_ingress");
    let ours = lines.iter().filter(|l| l.contains("ws_monitor")).find_map(|l| pref(l))?;
    let before: BTreeSet<u32> =
        lines.iter().filter(|l| !l.contains("ws_monitor")).filter_map(|l| pref(l)).filter(|p| *p < ours).collect();
    (!before.is_empty()).then(|| {
        let list: Vec<String> = before.iter().map(u32::to_string).collect();
        format!(
            "ws-monitor's filter had pref {ours}, behind the foreign filters at pref {} (which run first)",
            list.join(", ")
        )
    })
}

/// Major and minor of a kernel release string.
pub(super) fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One row of the matrix, with its failures (one line per failing cell).
pub(super) struct Row {
    pub(super) kernel: String,
    pub(super) mode: String,
    /// Capabilities kept once attached.
    pub(super) kept: String,
    pub(super) exact: String,
    pub(super) kill9: String,
    pub(super) restart: String,
    pub(super) foreign: String,
    pub(super) seconds: f64,
    pub(super) failures: Vec<String>,
}

pub(super) fn evaluate(run: &Run, reference: Option<&Value>) -> Row {
    let m = &run.markers;
    let release = m.result("kernel").unwrap_or("?").to_string();
    let kernel = if run.label == "host" { format!("host {release}") } else { format!("{} ({release})", run.label) };
    let mut row = Row {
        kernel,
        mode: "?".into(),
        kept: "?".into(),
        exact: "no".into(),
        kill9: "no".into(),
        restart: "no".into(),
        foreign: "no".into(),
        seconds: run.seconds,
        failures: Vec::new(),
    };
    let label = run.label.clone();
    let fail = |row: &mut Row, column: &str, problems: Vec<String>| -> bool {
        if problems.is_empty() {
            return false;
        }
        row.failures.push(format!("{label} {column}: {}", problems.join("; ")));
        true
    };
    if let Some(e) = &run.error {
        fail(&mut row, "run", vec![e.clone()]);
    }
    if m.results.is_empty() {
        return row;
    }

    // Attach mode: from the report when it says, else by kernel version.
    let report_mode = ["a", "b", "e", "f"].iter().find_map(|s| {
        let r: Value = serde_json::from_str(m.result(&format!("{s}.report"))?).ok()?;
        r.get("attach")?.get("mode")?.as_str().map(String::from)
    });
    let tcx = match &report_mode {
        Some(mode) => {
            row.mode = mode.clone();
            mode == "tcx"
        }
        None => {
            let tcx = version(&release).is_some_and(|v| v >= (6, 6));
            row.mode = format!("{} (by version)", if tcx { "tcx" } else { "netlink" });
            tcx
        }
    };
    // Privileges once attached: CAP_NET_ADMIN exactly under netlink (to detach at exit),
    // CAP_BPF where the kernel wants it for map access, nothing else; a seccomp filter.
    let privileges = ["a", "b", "e", "f"].iter().find_map(|s| {
        let r: Value = serde_json::from_str(m.result(&format!("{s}.report"))?).ok()?;
        r.get("privileges").cloned()
    });
    let mut p = Vec::new();
    match &privileges {
        Some(pv) => {
            let kept: Vec<&str> = pv["kept"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            row.kept = if kept.is_empty() { "none".into() } else { kept.join(", ") };
            if pv["seccomp"] != Value::Bool(true) {
                p.push("no seccomp filter".to_string());
            }
            if kept.contains(&"CAP_NET_ADMIN") == tcx {
                p.push(format!("CAP_NET_ADMIN {} under {}", if tcx { "kept" } else { "dropped" }, row.mode));
            }
            if let Some(extra) = kept.iter().find(|c| !matches!(**c, "CAP_BPF" | "CAP_NET_ADMIN")) {
                p.push(format!("{extra} kept"));
            }
        }
        None => p.push("the report says nothing of privileges".to_string()),
    }
    fail(&mut row, "kept after attach", p);

    let baseline_ids: BTreeSet<u64> = programs(m.result("base.progs")).into_iter().map(|p| p.0).collect();
    let baseline = (run.label != "host").then_some(&baseline_ids);

    // Exact capture (SIGTERM, SIGINT) and a clean state after the clean exits.
    let mut p = capture_problems(m, "a", reference);
    p.extend(capture_problems(m, "b", reference));
    let left = leftovers(m, "c", baseline, true);
    if !left.is_empty() {
        p.push(format!("after two clean exits still attached: {}", left.join(", ")));
    }
    if !fail(&mut row, "capture exact?", p) {
        row.exact = "yes".into();
    }

    // kill -9: an orphan filter may stay only with netlink, and must be dormant; detach.
    let mut p = Vec::new();
    let mut text = Vec::new();
    if m.result("d.started") != Some("yes") {
        p.push(format!("d: ws-monitor did not start capturing: {}", stderr_reason(m, "d")));
    }
    let left = leftovers(m, "d.killed", baseline, false);
    if m.result("d.orphan") == Some("yes") {
        if tcx {
            p.push(format!("with TCX something stayed after kill -9: {}", left.join(", ")));
        }
        let before = counters(m.result("d.counters_before"));
        let after = counters(m.result("d.counters_after"));
        let progs_before = programs(m.result("d.progs_before"));
        let progs_after = programs(m.result("d.progs_after"));
        let runs: (u64, u64) = progs_after.iter().filter(|q| q.1.starts_with("ws_monitor")).fold((0, 0), |acc, q| {
            let old = progs_before.iter().find(|o| o.0 == q.0).map_or((0, 0), |o| (o.2, o.3));
            (acc.0 + q.2.saturating_sub(old.0), acc.1 + q.3.saturating_sub(old.1))
        });
        if m.result("d.client_exit") != Some("0") || m.result("d.server_exit") != Some("0") {
            p.push("traffic on port 8001 failed with the orphan attached".into());
        }
        match (before, after) {
            (Some(b), Some(a)) => {
                let delta = |k: u64| a.get(&k).copied().unwrap_or(0).saturating_sub(b.get(&k).copied().unwrap_or(0));
                let (matched, copied) = (delta(COUNTER_PACKETS_MATCHED), delta(COUNTER_BYTES_COPIED));
                if matched > 0 || copied > 0 {
                    p.push(format!(
                        "the orphan is not dormant 6 s after kill -9: it matched {matched} packets and copied {copied} bytes of port 8001 traffic ({} runs, {} ns)",
                        runs.0, runs.1
                    ));
                } else {
                    text.push(format!("filter stays, dormant (ran {} times, copied nothing)", runs.0));
                }
            }
            _ => p.push("could not read the orphan's COUNTERS map (bpftool map dump name COUNTERS)".into()),
        }
    } else if !left.is_empty() {
        p.push(format!("after kill -9 still loaded: {}", left.join(", ")));
    } else {
        text.push("nothing stays".into());
    }
    if m.result("g.started") != Some("yes") {
        p.push(format!("g: ws-monitor did not start capturing: {}", stderr_reason(m, "g")));
    }
    let detach_rc = m.result("g.detach.rc").unwrap_or("?");
    if detach_rc != "0" {
        let why = m.lines("g.detach").iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
        p.push(format!("`ws-monitor detach --iface lo` exited {detach_rc}: {}", why.trim()));
    } else {
        let left = leftovers(m, "g.after", baseline, true);
        if left.is_empty() {
            text.push("detach ok".into());
        } else {
            p.push(format!("after `ws-monitor detach` still attached: {}", left.join(", ")));
        }
    }
    if !fail(&mut row, "after kill -9", p) {
        row.kill9 = text.join("; ");
    }

    // Restart on top of the killed instance.
    let mut p = capture_problems(m, "e", reference);
    let orphan = m.result("d.orphan") == Some("yes");
    let stale = m.lines("e.stderr").iter().any(|l| l.to_ascii_lowercase().contains("stale"));
    if orphan && !stale {
        p.push("e: no stderr line about removing the stale ws-monitor filter".into());
    }
    let left = leftovers(m, "e.after", baseline, true);
    if !left.is_empty() {
        p.push(format!("after the restarted instance exited still attached: {}", left.join(", ")));
    }
    if !fail(&mut row, "after restart", p) {
        row.restart = if stale { "exact, stale filter removed".into() } else { "exact".into() };
    }

    // A foreign clsact qdisc and foreign filters.
    let mut p = Vec::new();
    if m.result("f.add_qdisc.rc") != Some("0") {
        p.push(format!("could not add the foreign clsact qdisc: {}", m.lines("f.add_qdisc").join(" ")));
    }
    let foreign = foreign_filters(m, "f.before");
    if foreign.is_empty() {
        p.push(format!("could not add a foreign filter: {}", m.lines("f.add_bpf").join(" ")));
    }
    let f_problems = capture_problems(m, "f", reference);
    let f_problems_empty = f_problems.is_empty();
    if !f_problems_empty {
        if let Some(hint) = priority_hint(m) {
            p.push(hint);
        }
    }
    p.extend(f_problems);
    if !m.lines("f.after.qdisc").iter().any(|l| l.contains("clsact")) {
        p.push("the foreign clsact qdisc was removed".into());
    }
    let after = foreign_filters(m, "f.after");
    let lost: Vec<&String> = foreign.difference(&after).collect();
    if !lost.is_empty() {
        p.push(format!(
            "foreign filters changed or removed: {}",
            lost.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" | ")
        ));
    }
    let left = leftovers(m, "f.after", baseline, false);
    if !left.is_empty() {
        p.push(format!("after exit still attached: {}", left.join(", ")));
    }
    let kept = !foreign.is_empty() && lost.is_empty() && m.lines("f.after.qdisc").iter().any(|l| l.contains("clsact"));
    let exact = f_problems_empty;
    if !fail(&mut row, "foreign qdisc kept?", p) {
        row.foreign = format!("yes ({} foreign filter{})", foreign.len(), if foreign.len() == 1 { "" } else { "s" });
    } else if kept && !exact {
        row.foreign = "kept, but capture not exact".into();
    }
    row
}

pub(super) const HEADERS: [&str; 8] = [
    "kernel",
    "attach mode",
    "kept after attach",
    "capture exact?",
    "after kill -9",
    "after restart",
    "foreign qdisc kept?",
    "time (s)",
];

pub(super) fn cells(r: &Row) -> [String; 8] {
    [
        r.kernel.clone(),
        r.mode.clone(),
        r.kept.clone(),
        r.exact.clone(),
        r.kill9.clone(),
        r.restart.clone(),
        r.foreign.clone(),
        format!("{:.0}", r.seconds),
    ]
}

pub(super) fn table(rows: &[Row]) -> String {
    let all: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &all {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join(" | ").trim_end().to_string()
    };
    let mut out = line(&HEADERS.map(String::from));
    out.push('\n');
    out.push_str(&widths.map(|w| "-".repeat(w)).join("-|-"));
    for r in &all {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

pub(super) fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n|{}\n", HEADERS.join(" | "), "---|".repeat(HEADERS.len()));
    for r in rows {
        out.push_str(&format!("| {} |\n", cells(r).join(" | ")));
    }
    out
}
