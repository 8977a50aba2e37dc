//! Text formatting for the dashboard: counts, rates, byte rates, durations, times,
//! sparklines and header hex. Pure functions, no state.

use std::time::{Duration, SystemTime};

use crate::engine::FrameHeaderBytes;

const NS_PER_SEC: u64 = 1_000_000_000;

/// Sparkline levels, lowest first (index 0 = no activity).
const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A count: exact below a million, then `1.23M`, `45.6G`.
pub fn count(n: u64) -> String {
    if n < 1_000_000 {
        return n.to_string();
    }
    scaled(n as f64, 1000.0, &["", "k", "M", "G", "T", "P", "E"])
}

/// `v` scaled by `step` with three significant digits and the matching unit suffix.
fn scaled(mut v: f64, step: f64, units: &[&str]) -> String {
    let mut unit = units.first().copied().unwrap_or("");
    for u in units.iter().skip(1) {
        if v < step {
            break;
        }
        v /= step;
        unit = u;
    }
    if v >= 100.0 || unit.is_empty() {
        format!("{v:.0}{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// Events per second: `0`, `0.1/s`, `12/s`, `1.2k/s`.
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() || per_s <= 0.0 {
        return "0".to_string();
    }
    if per_s < 10.0 {
        return format!("{per_s:.1}/s");
    }
    if per_s < 1000.0 {
        return format!("{per_s:.0}/s");
    }
    format!("{}/s", scaled(per_s, 1000.0, &["", "k", "M", "G", "T"]))
}

/// Bytes with binary units, compact: `0`, `512B`, `1.50Ki`, `12.0Mi`.
pub fn bytes(n: u64) -> String {
    if n == 0 {
        return "0".to_string();
    }
    scaled(n as f64, 1024.0, &["B", "Ki", "Mi", "Gi", "Ti"])
}

/// Bytes per second with binary units: `0 B/s`, `512 B/s`, `1.50 KiB/s`.
pub fn bytes_rate(per_s: f64) -> String {
    if !per_s.is_finite() || per_s <= 0.0 {
        return "0 B/s".to_string();
    }
    let s = scaled(per_s, 1024.0, &["", "Ki", "Mi", "Gi", "Ti"]);
    // Split number and unit prefix for a readable "1.50 KiB/s".
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    format!("{num} {unit}B/s")
}

/// A duration as `HH:MM:SS` (`Nd HH:MM:SS` from one day on).
pub fn hms(ns: u64) -> String {
    let secs = ns / NS_PER_SEC;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A short duration: `45s`, `5m`, `5m30s`, `2h`, `2h05m`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ if secs.is_multiple_of(3600) => format!("{}h", secs / 3600),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

/// How long ago `then_ns` was at `now_ns`: `now`, `5s`, `3m`, `2h`, `4d`.
pub fn ago(now_ns: u64, then_ns: u64) -> String {
    let secs = now_ns.saturating_sub(then_ns) / NS_PER_SEC;
    match secs {
        0 => "now".to_string(),
        1..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Time of an event: `HH:MM:SS.mmm` (UTC) when the offset from the event clock to the
/// Unix epoch is known, else `+HH:MM:SS.mmm` since `started_ns`.
pub fn event_time(ts_ns: u64, started_ns: u64, epoch_offset_ns: Option<i128>) -> String {
    match epoch_offset_ns {
        Some(off) => {
            let epoch = (i128::from(ts_ns) + off).clamp(0, i128::from(u64::MAX));
            let epoch = u64::try_from(epoch).unwrap_or(0);
            let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(epoch);
            // "2025-03-14T09:26:41.250Z" -> "09:26:41.250"
            let s = humantime::format_rfc3339_millis(t).to_string();
            s.get(11..23).map_or(s.clone(), str::to_string)
        }
        None => {
            let d = ts_ns.saturating_sub(started_ns);
            format!("+{}.{:03}", hms(d), d % NS_PER_SEC / 1_000_000)
        }
    }
}

/// A sparkline of `series` (oldest first, one value per second) in `width` characters,
/// right-aligned (the last character is the most recent), `secs_per_char` seconds per
/// character, scaled to the largest character. Any activity shows at least `▁`.
pub fn sparkline(series: &[u64], width: usize, secs_per_char: usize) -> String {
    let per = secs_per_char.max(1);
    let mut cells = vec![0u64; width];
    // Walk back from the most recent second, filling cells right to left.
    for (i, v) in series.iter().rev().enumerate() {
        let cell = i / per;
        if cell >= width {
            break;
        }
        if let Some(c) = cells.get_mut(width - 1 - cell) {
            *c = c.saturating_add(*v);
        }
    }
    let max = cells.iter().copied().max().unwrap_or(0);
    cells
        .iter()
        .map(|&v| {
            if v == 0 || max == 0 {
                return ' ';
            }
            let level = (v.saturating_mul(8).div_ceil(max)).clamp(1, 8);
            BARS.get(level as usize).copied().unwrap_or('█')
        })
        .collect()
}

/// Seconds per sparkline character so that `width` characters cover `history_secs`.
pub fn secs_per_char(history_secs: usize, width: usize) -> usize {
    if width == 0 {
        return 1;
    }
    history_secs.div_ceil(width).max(1)
}

/// Header bytes as spaced hex (`81 85 a1 b2 c3 d4`), or `-` when there are none.
pub fn spaced_hex(h: &FrameHeaderBytes) -> String {
    if h.is_empty() {
        return "-".to_string();
    }
    h.as_slice().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Header bytes as compact hex, or `-` when there are none.
pub fn compact_hex(h: &FrameHeaderBytes) -> String {
    if h.is_empty() {
        "-".to_string()
    } else {
        h.hex()
    }
}

/// The fields of a frame header, decoded for the details popup
/// (`FIN=1 RSV=100 op=1 (text) MASK=1 len=5`).
pub fn decode_header(h: &FrameHeaderBytes) -> Option<String> {
    let b = h.as_slice();
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let fin = b0 >> 7;
    let rsv = (b0 >> 4) & 0b111;
    let op = b0 & 0x0f;
    let masked = b1 >> 7;
    let len7 = b1 & 0x7f;
    let op_name = match op {
        0x0 => "continuation",
        0x1 => "text",
        0x2 => "binary",
        0x8 => "close",
        0x9 => "ping",
        0xA => "pong",
        _ => "reserved",
    };
    let len = match len7 {
        126 => b.get(2..4).map(|s| s.iter().fold(0u64, |a, &x| a << 8 | u64::from(x))),
        127 => b.get(2..10).map(|s| s.iter().fold(0u64, |a, &x| a << 8 | u64::from(x))),
        n => Some(u64::from(n)),
    };
    let len = len.map_or_else(|| "?".to_string(), |l| l.to_string());
    Some(format!("FIN={fin} RSV={rsv:03b} opcode={op} ({op_name}) MASK={masked} length={len}"))
}

/// Truncates `s` to at most `max` characters, ending with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}
