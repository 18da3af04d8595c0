//! Helpers the benches of several crates share (a dev-dependency only, never published): the
//! figures that say under what conditions a run was measured (date, cores, load average), a
//! process's CPU time from `/proc`, and settings read from the environment. They live in one
//! place so that every bench reports them alike.

use std::process::Command;
use std::time::Duration;

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them (empty where it
/// cannot be read).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current date and time in UTC, to the minute (empty if `date` cannot be run).
pub fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Cores this process may use (0 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The Markdown table that heads a bench's results: date, cores and the load average before
/// the run (a blank line after it).
pub fn machine_table() -> String {
    format!(
        "| | |\n|---|---|\n| date | {} |\n| cores | {} |\n| load average before | {} |\n",
        date_utc(),
        cores(),
        loadavg()
    )
}

/// User plus system CPU time of process `pid` so far (zero if it cannot be read).
pub fn process_cpu(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU time so far of each thread of process `pid`, by thread id.
pub fn thread_cpus(pid: u32) -> Vec<(u32, Duration)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse().ok()?;
            Some((tid, stat_cpu(&format!("{}/stat", entry.path().display()))))
        })
        .collect()
}

/// utime + stime of a `/proc/.../stat` file.
fn stat_cpu(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    parse_stat_cpu(&stat)
}

/// utime + stime (fields 14 and 15, counted after the command name, which may hold spaces and
/// parentheses) of a `stat` line, in USER_HZ ticks of 10 ms (USER_HZ is 100 on Linux).
fn parse_stat_cpu(stat: &str) -> Duration {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The whole number in environment variable `name`, or `default` when it is unset or not one.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_adds_user_and_system_time_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...; the command name holds a space and a parenthesis.
        let line = "42 (a) b) S 1 42 42 0 -1 4194560 10 0 0 0 250 17 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(line), Duration::from_millis(2670));
        assert_eq!(parse_stat_cpu("garbage"), Duration::ZERO);
    }

    #[test]
    fn this_process_is_found_with_its_threads() {
        let pid = std::process::id();
        let spin: u64 = (0..2_000_000u64).fold(0, |a, x| a.wrapping_add(x * x));
        assert_ne!(spin, 1);
        let threads = thread_cpus(pid);
        assert!(threads.iter().any(|&(tid, _)| tid == pid), "{threads:?}");
        assert!(process_cpu(pid) >= threads.iter().map(|t| t.1).max().unwrap_or_default());
    }

    #[test]
    fn the_machine_table_names_cores_and_load() {
        let table = machine_table();
        assert!(table.starts_with("| | |\n|---|---|\n| date | "), "{table}");
        assert!(
            table.contains(&format!("| cores | {} |", cores())),
            "{table}"
        );
        assert!(table.ends_with(&format!("| load average before | {} |\n", loadavg())));
    }

    #[test]
    fn env_u64_falls_back_to_the_default() {
        assert_eq!(env_u64("GAPTUN_BENCH_SUPPORT_SURELY_UNSET", 7), 7);
    }
}
