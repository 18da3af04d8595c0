//! Bulk goodput with iperf3 (JSON output), run inside a namespace.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::emulator::netns;
use crate::error::{BenchError, Result};
use crate::procs::{self, Managed};

/// One iperf3 test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IperfSpec {
    /// Address the client connects to (inside the client namespace).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Measured length in seconds, after the warm-up.
    pub seconds: u64,
    /// Seconds at the start of the test left out of the goodput (start-up: slow start, BBR's
    /// start-up phase). The test runs for `warmup + seconds`.
    pub warmup: u64,
    /// Parallel streams (`-P`).
    pub streams: u32,
    /// Server sends (`-R`).
    pub reverse: bool,
    /// TCP congestion controller for the test sockets (`-C`).
    pub congestion: Option<String>,
}

/// What a test achieved, measured at the receiver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IperfResult {
    /// Payload bytes received over the whole test, warm-up included.
    pub bytes: u64,
    /// Length of the whole test.
    pub seconds: f64,
    /// Goodput in Mbit/s over the whole test, warm-up included.
    pub mbit: f64,
    /// Goodput in Mbit/s after the warm-up, from the receiver's per-second intervals (`None`
    /// when the report has no intervals after the warm-up).
    pub steady_mbit: Option<f64>,
    /// TCP retransmissions at the sender, when iperf3 reports them.
    pub retransmits: Option<u64>,
    /// Congestion controller the sender used, as iperf3 reports it.
    pub sender_congestion: Option<String>,
}

/// Starts `iperf3 -s -J` on `port` in namespace `ns` (JSON, so that clients asking with
/// `--get-server-output` get the server's per-second receive intervals as JSON).
pub fn server(ns: &str, port: u16, log: &Path) -> Result<Managed> {
    let port = port.to_string();
    Managed::spawn(
        &format!("iperf3 server :{port}"),
        netns::exec(ns, "iperf3").args(["-s", "-J", "-i", "1", "-p", &port]),
        log,
    )
}

/// Attempts when the server still finishes the previous test.
const BUSY_ATTEMPTS: u32 = 5;

/// Runs one client test in namespace `ns`, bounded to the test length plus 30 s. The server
/// may still be tearing down the previous test (through a lossy tunnel that takes a few round
/// trips) and answer "busy": then the test is started again after a second.
pub fn run(ns: &str, spec: &IperfSpec) -> Result<IperfResult> {
    let mut attempt = 1;
    loop {
        match run_once(ns, spec) {
            Err(e) if attempt < BUSY_ATTEMPTS && e.to_string().contains("server is busy") => {
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

fn run_once(ns: &str, spec: &IperfSpec) -> Result<IperfResult> {
    let mut cmd = netns::exec(ns, "iperf3");
    let total = spec.seconds + spec.warmup;
    cmd.args(["-c", &spec.host, "-p", &spec.port.to_string()])
        .args(["-t", &total.to_string(), "-P", &spec.streams.to_string()])
        .args(["-J", "-i", "1", "--get-server-output"])
        .args(["--connect-timeout", "5000", "-O", "0"]);
    if spec.reverse {
        cmd.arg("-R");
    }
    if let Some(cc) = &spec.congestion {
        cmd.args(["-C", cc]);
    }
    let out = procs::run_unchecked(&mut cmd, Duration::from_secs(total + 30))?;
    parse(
        &String::from_utf8_lossy(&out.stdout),
        spec.reverse,
        spec.warmup,
        total,
    )
}

/// Goodput in Mbit/s over the receiver's intervals that start in `[warmup, last)`, `last` being
/// the test's nominal length. The receiver is the client for `-R` tests (its own `intervals`),
/// else the server (the `server_output_json` that `--get-server-output` adds). The receiver's
/// report ends with a short interval after the sender stopped (the last data in flight), which
/// is not part of the steady state.
fn steady_mbit(v: &Value, reverse: bool, warmup: u64, last: u64) -> Option<f64> {
    let path = if reverse {
        "/intervals"
    } else {
        "/server_output_json/intervals"
    };
    let (bytes, secs) = v
        .pointer(path)?
        .as_array()?
        .iter()
        .filter_map(|i| {
            let sum = i.get("sum")?;
            let start = sum.get("start")?.as_f64()?;
            let stop = sum.get("end")?.as_f64()?;
            let bytes = sum.get("bytes")?.as_f64()?;
            // Intervals start a few microseconds late: compare with 1 ms of slack.
            let steady = start + 1e-3 >= warmup as f64 && start + 1e-3 < last as f64;
            (steady && stop > start).then_some((bytes, stop - start))
        })
        .fold((0.0, 0.0), |(b, t), (bytes, secs)| (b + bytes, t + secs));
    (secs > 0.0).then(|| bytes * 8.0 / secs / 1e6)
}

/// Reads the receiver-side totals out of iperf3's JSON report, and the goodput between `warmup`
/// and `total` seconds (the test's length) from the receiver's intervals.
pub fn parse(json: &str, reverse: bool, warmup: u64, total: u64) -> Result<IperfResult> {
    let bad = |detail: String| BenchError::Parse {
        what: "iperf3 JSON".into(),
        detail,
    };
    let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(bad(format!("iperf3 error: {err}")));
    }
    let recv = v
        .pointer("/end/sum_received")
        .ok_or_else(|| bad("no end.sum_received".into()))?;
    let bytes = recv
        .get("bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no bytes".into()))?;
    let seconds = recv.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let bps = recv
        .get("bits_per_second")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let retransmits = v
        .pointer("/end/sum_sent/retransmits")
        .and_then(Value::as_u64);
    let sender_congestion = v
        .pointer("/end/sender_tcp_congestion")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(IperfResult {
        bytes,
        seconds,
        mbit: bps / 1e6,
        steady_mbit: steady_mbit(&v, reverse, warmup, total),
        retransmits,
        sender_congestion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_receiver_totals() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bytes":100,"retransmits":7},
            "sender_tcp_congestion":"cubic",
            "sum_received":{"seconds":8.1,"bytes":84100000,"bits_per_second":87000000.5}}}"#;
        let r = parse(json, false, 0, 8).unwrap();
        assert_eq!(r.bytes, 84_100_000);
        assert_eq!(r.steady_mbit, None);
        assert_eq!(r.retransmits, Some(7));
        assert_eq!(r.sender_congestion.as_deref(), Some("cubic"));
        assert!((r.mbit - 87.0000005).abs() < 1e-9);
        assert!((r.seconds - 8.1).abs() < 1e-12);
    }

    #[test]
    fn reports_iperf_error_and_garbage() {
        let e = parse(
            r#"{"start":{},"end":{},"error":"unable to connect"}"#,
            false,
            0,
            8,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unable to connect"));
        assert!(matches!(
            parse("not json", true, 0, 8),
            Err(BenchError::Parse { .. })
        ));
        assert!(parse(r#"{"end":{}}"#, false, 0, 8).is_err());
    }

    const END: &str =
        r#""end":{"sum_received":{"seconds":3,"bytes":3000000,"bits_per_second":8e6}}"#;

    fn interval(start: f64, end: f64, bytes: u64) -> String {
        format!(r#"{{"streams":[],"sum":{{"start":{start},"end":{end},"bytes":{bytes}}}}}"#)
    }

    #[test]
    fn steady_goodput_skips_the_warm_up_at_the_receiver() {
        let ivs = [
            interval(0.0, 1.0, 250_000),
            interval(1.0, 2.000_05, 1_250_000),
            interval(2.000_05, 3.000_05, 1_500_000),
            // After the sender stopped: left out.
            interval(3.000_05, 3.2, 10_000),
        ]
        .join(",");
        // Upload: the server received; the client's own intervals are the sender's.
        let up = format!(
            r#"{{"intervals":[{}],"server_output_json":{{"intervals":[{ivs}]}},{END}}}"#,
            interval(0.0, 3.0, 999)
        );
        let r = parse(&up, false, 1, 3).unwrap();
        let steady = r.steady_mbit.unwrap();
        let expected = 2_750_000.0 * 8.0 / 2.000_05 / 1e6;
        assert!((steady - expected).abs() < 1e-9, "{steady} vs {expected}");
        assert!((r.mbit - 8.0).abs() < 1e-12);
        // Download: the client's intervals are the receiver's.
        let down = format!(r#"{{"intervals":[{ivs}],{END}}}"#);
        let r = parse(&down, true, 2, 3).unwrap();
        assert!((r.steady_mbit.unwrap() - 12.0).abs() < 1e-3);
        // No interval after the warm-up.
        assert_eq!(parse(&down, true, 3, 3).unwrap().steady_mbit, None);
    }
}
