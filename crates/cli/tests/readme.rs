//! The README's tour, run as written, so that it cannot drift from the
//! command: every `$ cport …` line of its "A short tour" section runs
//! against the real binary, and the output has the shape the README shows
//! under it.
//!
//! Two liberties, both forced by a shared machine: the server gets
//! `--port 0` (9000 may be taken) and the other commands are pointed at
//! the port it got. `cport bench` lines are only parsed (`--help` added):
//! a whole matrix takes many minutes, and tests/bench.rs runs bench.

// Linux only, as tests/common is (see there).
#![cfg(target_os = "linux")]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    listening_addr, read_until_line, run_cport, send_signal, wait_exit, KillOnDrop, Signal, BIN,
    STEP,
};

/// The address the tour's commands name.
const TOUR_ADDR: &str = "127.0.0.1:9000";

/// One `$` line of the tour and the output shown under it.
#[derive(Debug)]
struct Step {
    line: String,
    /// The arguments after `cport`.
    args: Vec<String>,
    /// What `printf '…' |` feeds it.
    stdin: Vec<u8>,
    shown: Vec<String>,
}

fn tour() -> Vec<Step> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md is readable");
    let start = readme
        .find("\n## A short tour")
        .expect("the README has a section \"A short tour\"");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_code = false;
    let mut collecting = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            collecting = false;
            continue;
        }
        if !in_code {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(step(line, cmd));
            collecting = true;
        } else if line.trim().is_empty() {
            collecting = false;
        } else if collecting {
            steps.last_mut().unwrap().shown.push(line.to_string());
        }
    }
    steps
}

/// `cport ARGS` or `printf 'TEXT' | cport ARGS`, a comment after `#`.
fn step(line: &str, cmd: &str) -> Step {
    let words = shell_words(cmd);
    let (stdin, command) = match words.iter().position(|w| w == "|") {
        Some(bar) => match &words[..bar] {
            [printf, text] if printf == "printf" => {
                (text.replace("\\n", "\n").into_bytes(), &words[bar + 1..])
            }
            other => panic!("{line:?}: the test can feed only printf, not {other:?}"),
        },
        None => (Vec::new(), &words[..]),
    };
    let Some((cport, args)) = command.split_first().filter(|(c, _)| *c == "cport") else {
        panic!("{line:?}: the tour's commands call `cport`");
    };
    assert_eq!(cport, "cport");
    Step {
        line: line.to_string(),
        args: args.to_vec(),
        stdin,
        shown: Vec::new(),
    }
}

/// Words as sh splits them, for the forms the tour uses: blanks separate,
/// single quotes keep blanks, `#` at a word's start begins a comment.
fn shell_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in cmd.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            '#' if !quoted && word.is_none() => break,
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(!quoted, "an unclosed quote in {cmd:?}");
    words.extend(word);
    words
}

/// A line with its address and the values of `key=value` words masked,
/// to compare shapes.
fn shape(line: &str) -> String {
    line.split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, _)) => format!("{k}=…"),
            None if w.parse::<std::net::SocketAddr>().is_ok() => "ADDR".into(),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_tour_runs_as_written() {
    let steps = tour();
    let mut server: Option<(KillOnDrop, String)> = None;
    let (mut ran, mut not_run) = (Vec::new(), Vec::new());
    for s in &steps {
        let sub = s
            .args
            .iter()
            .find(|a| !a.starts_with('-'))
            .map(String::as_str);
        match sub {
            Some("serve") => {
                assert!(server.is_none(), "{}: a second server", s.line);
                let mut child = KillOnDrop(
                    Command::new(BIN)
                        .args(&s.args)
                        .args(["--port", "0"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("cport starts"),
                );
                let first = read_until_line(child.0.stdout.take().unwrap(), "", false);
                let want = s.shown.first().expect("the tour shows the listening line");
                assert_eq!(shape(&first), shape(want), "{}", s.line);
                server = Some((child, listening_addr(&first).to_string()));
            }
            Some("client" | "load") => {
                let addr = &server.as_ref().expect("the server runs first").1;
                let args: Vec<&str> = s
                    .args
                    .iter()
                    .map(|a| if a == TOUR_ADDR { addr } else { a.as_str() })
                    .collect();
                let out = run_cport(&args, &s.stdin, Duration::from_secs(60));
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "{}: {:?}\n{text}{}",
                    s.line,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                if sub == Some("client") {
                    assert_eq!(text, s.shown.join("\n") + "\n", "{}", s.line);
                } else {
                    // The same report lines, in the same order.
                    let labels = |lines: Vec<&str>| -> Vec<String> {
                        lines
                            .iter()
                            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
                            .collect()
                    };
                    let shown = labels(s.shown.iter().map(String::as_str).collect());
                    assert_eq!(labels(text.lines().collect()), shown, "{}", s.line);
                    assert!(text.contains("\nerrors     0\n"), "{text}");
                }
            }
            Some("bench") => {
                // clap reads every flag before it, so the flags exist.
                let mut args: Vec<&str> = s.args.iter().map(String::as_str).collect();
                args.push("--help");
                let out = run_cport(&args, b"", STEP);
                assert!(out.status.success(), "{}: {:?}", s.line, out.status);
                not_run.push(s.line.as_str());
                continue;
            }
            _ => panic!("{}: a command the test does not know how to run", s.line),
        }
        ran.push(s.line.as_str());
    }
    eprintln!("ran: {ran:#?}\nonly parsed (see the module docs): {not_run:#?}");
    assert!(
        ran.len() >= 4,
        "the tour shows a server, two clients and a load: found {steps:#?}"
    );
    // As the tour says: Ctrl-C stops the server, with 0.
    let (mut child, _) = server.expect("the tour starts a server");
    send_signal(child.0.id(), Signal::INT);
    let status = wait_exit(&mut child.0, STEP).expect("the server stops on Ctrl-C");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn shell_words_split_as_sh_does() {
    assert_eq!(
        shell_words("printf 'hello, port\\n' | cport client 127.0.0.1:9000   # a note"),
        [
            "printf",
            "hello, port\\n",
            "|",
            "cport",
            "client",
            "127.0.0.1:9000"
        ]
    );
    assert_eq!(
        shell_words("cport bench --quick"),
        ["cport", "bench", "--quick"]
    );
}
