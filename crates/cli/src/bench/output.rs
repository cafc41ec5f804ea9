//! What the runner reads from its children's output: the server's first
//! line, the load's JSON report; and how it writes a command line to the
//! log. Pure.

use std::process::Command;

pub fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
}

/// The address and backend from `listening on ADDR (...) ... backend=NAME`.
pub fn parse_listening(line: &str) -> Option<(String, Option<String>)> {
    let addr = line
        .strip_prefix("listening on ")?
        .split_whitespace()
        .next()?;
    let backend = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("backend="))
        .map(str::to_string);
    Some((addr.to_string(), backend))
}

/// The command line as it would be typed, for the log.
pub fn shown(cmd: &Command) -> String {
    let mut v = vec![cmd.get_program().to_string_lossy().into_owned()];
    v.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    v.join(" ")
}

/// What the load's JSON report says.
#[derive(Debug, PartialEq)]
pub struct LoadReport {
    pub messages: u64,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub fn parse_load_json(s: &str) -> Option<LoadReport> {
    let v: serde_json::Value = serde_json::from_str(s.trim()).ok()?;
    Some(LoadReport {
        messages: v["messages"].as_u64()?,
        msgs_per_s: v["messages_per_sec"].as_f64()?,
        mb_per_s: v["mb_per_sec"].as_f64()?,
        p50_us: v["latency_us"]["p50"].as_f64()?,
        p99_us: v["latency_us"]["p99"].as_f64()?,
        errors: v["errors"].as_u64()?,
        first_error: v["first_error"].as_str().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines() {
        assert_eq!(
            parse_listening(
                "listening on 127.0.0.1:4000 (tcp) backend=uring workers=2 concurrency=1"
            ),
            Some(("127.0.0.1:4000".into(), Some("uring".into())))
        );
        assert_eq!(
            parse_listening(
                "listening on [::1]:80 (tcp only: the poll model serves no udp) model=poll"
            ),
            Some(("[::1]:80".into(), None))
        );
        // The peers' line (crates/bench/src/peer.rs).
        assert_eq!(
            parse_listening("listening on 127.0.0.1:39611 (tcp) backend=epoll threads=2"),
            Some(("127.0.0.1:39611".into(), Some("epoll".into())))
        );
        assert_eq!(parse_listening("error: no"), None);
    }

    #[test]
    fn load_reports() {
        let json = r#"{"addr":"127.0.0.1:1","messages":10,"messages_per_sec":5.0,
            "mb_per_sec":0.5,"latency_us":{"p50":12.5,"p99":99.0},"errors":2,
            "first_error":"connection 3: closed"}"#;
        assert_eq!(
            parse_load_json(json),
            Some(LoadReport {
                messages: 10,
                msgs_per_s: 5.0,
                mb_per_s: 0.5,
                p50_us: 12.5,
                p99_us: 99.0,
                errors: 2,
                first_error: Some("connection 3: closed".into()),
            })
        );
        assert_eq!(parse_load_json(""), None);
        assert_eq!(parse_load_json(r#"{"messages":1}"#), None);
    }
}
