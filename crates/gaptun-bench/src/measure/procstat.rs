//! CPU time and peak memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#![allow(unsafe_code)]

use crate::error::{BenchError, IoContext, Result};

/// Clock ticks per second for `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime in clock ticks, parsed from the text of `/proc/<pid>/stat`.
///
/// The command name (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`: after it come state (field 3) … utime (14) and stime (15).
pub fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let bad = |detail: &str| BenchError::Parse {
        what: "/proc/<pid>/stat".into(),
        detail: detail.into(),
    };
    let close = stat.rfind(')').ok_or_else(|| bad("no ')'"))?;
    let rest = stat.get(close + 1..).ok_or_else(|| bad("truncated"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| bad("missing utime/stime"))
    };
    Ok(get(11)? + get(12)?)
}

/// The value of a `Vm…:` line (e.g. `VmHWM:`, `VmRSS:`) in KiB, from the text of
/// `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// `VmHWM` (peak resident set) in KiB, parsed from the text of `/proc/<pid>/status`.
pub fn parse_vmhwm_kib(status: &str) -> Result<u64> {
    parse_status_kib(status, "VmHWM:").ok_or_else(|| BenchError::Parse {
        what: "/proc/<pid>/status".into(),
        detail: "no VmHWM line".into(),
    })
}

/// CPU seconds (user + system) used so far by `pid`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).ctx(format!("read stat {pid}"))?;
    Ok(parse_stat_ticks(&text)? as f64 / clock_ticks())
}

/// Peak resident set size of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/status")).ctx(format!("read status {pid}"))?;
    parse_vmhwm_kib(&text)
}

/// Sum of CPU seconds over several processes (ones that vanished count as zero).
pub fn total_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_name() {
        let stat = "1234 (kcp (x) srv) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8 0 \
                    100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 325);
        assert!(matches!(
            parse_stat_ticks("garbage"),
            Err(BenchError::Parse { .. })
        ));
    }

    #[test]
    fn vmhwm() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t 4000 kB\n";
        assert_eq!(parse_vmhwm_kib(status).unwrap(), 5120);
        assert!(parse_vmhwm_kib("Name: x\n").is_err());
    }

    #[test]
    fn own_process_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(peak_rss_kib(pid).unwrap() > 0);
    }
}
