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
    /// Test length in seconds.
    pub seconds: u64,
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
    /// Payload bytes received.
    pub bytes: u64,
    /// Measured interval.
    pub seconds: f64,
    /// Goodput in Mbit/s.
    pub mbit: f64,
    /// TCP retransmissions at the sender, when iperf3 reports them.
    pub retransmits: Option<u64>,
    /// Congestion controller the sender used, as iperf3 reports it.
    pub sender_congestion: Option<String>,
}

/// Starts `iperf3 -s` on `port` in namespace `ns`.
pub fn server(ns: &str, port: u16, log: &Path) -> Result<Managed> {
    let port = port.to_string();
    Managed::spawn(
        &format!("iperf3 server :{port}"),
        netns::exec(ns, "iperf3").args(["-s", "-p", &port]),
        log,
    )
}

/// Runs one client test in namespace `ns`, bounded to the test length plus 30 s.
pub fn run(ns: &str, spec: &IperfSpec) -> Result<IperfResult> {
    let mut cmd = netns::exec(ns, "iperf3");
    cmd.args(["-c", &spec.host, "-p", &spec.port.to_string()])
        .args([
            "-t",
            &spec.seconds.to_string(),
            "-P",
            &spec.streams.to_string(),
        ])
        .args(["-J", "--connect-timeout", "5000", "-O", "0"]);
    if spec.reverse {
        cmd.arg("-R");
    }
    if let Some(cc) = &spec.congestion {
        cmd.args(["-C", cc]);
    }
    let out = procs::run_unchecked(&mut cmd, Duration::from_secs(spec.seconds + 30))?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Reads the receiver-side totals out of iperf3's JSON report.
pub fn parse(json: &str) -> Result<IperfResult> {
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
        let r = parse(json).unwrap();
        assert_eq!(r.bytes, 84_100_000);
        assert_eq!(r.retransmits, Some(7));
        assert_eq!(r.sender_congestion.as_deref(), Some("cubic"));
        assert!((r.mbit - 87.0000005).abs() < 1e-9);
        assert!((r.seconds - 8.1).abs() < 1e-12);
    }

    #[test]
    fn reports_iperf_error_and_garbage() {
        let e = parse(r#"{"start":{},"end":{},"error":"unable to connect"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"));
        assert!(matches!(parse("not json"), Err(BenchError::Parse { .. })));
        assert!(parse(r#"{"end":{}}"#).is_err());
    }
}
