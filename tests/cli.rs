//! The CLI as a user runs it: `serve` and `client` as two processes, and `demo`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_secmoe");

#[test]
fn help_lists_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["demo", "keygen", "serve", "client"] {
        assert!(text.contains(cmd), "--help does not list {cmd}:\n{text}");
    }
}

#[test]
fn demo_runs_both_parties_and_checks_the_results() {
    let out = Command::new(BIN).args(["demo", "--ots", "20000", "--values", "100"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("estimated LAN") && text.contains("estimated WAN"), "{text}");
    assert_eq!(text.matches("all correct").count(), 2, "{text}");
}

#[test]
fn serve_and_client_in_two_processes() {
    let dir = std::env::temp_dir().join(format!("secmoe-cli-test-{}", std::process::id()));
    let id = dir.join("id");
    let status = Command::new(BIN).args(["keygen", "--out"]).arg(&id).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    let mut server = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--once", "--ots", "5000", "--identity"])
        .arg(&id)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The server prints its address and fingerprint first.
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let mut addr = String::new();
    let mut fp = String::new();
    for line in lines.by_ref().take(3) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("secmoe server listening on ") {
            addr = rest.split_whitespace().next().unwrap().to_string();
        }
        if let Some(rest) = line.strip_prefix("fingerprint (SHA-256): ") {
            fp = rest.to_string();
        }
    }
    assert!(!addr.is_empty() && !fp.is_empty());
    let client = Command::new(BIN)
        .args(["client", "--connect", &addr, "--ots", "5000", "--fingerprint", &fp, "--peer-cert"])
        .arg(id.join("server.cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "{text}\n{}", String::from_utf8_lossy(&client.stderr));
    assert!(text.contains("ok: shared sum"), "{text}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = server.wait().unwrap();
    assert!(status.success());
    assert_eq!(rest.iter().filter(|l| l.contains("all correct")).count(), 2, "{rest:?}");

    // A wrong fingerprint is refused before connecting.
    let bad = Command::new(BIN)
        .args(["client", "--connect", &addr, "--fingerprint", "00:11", "--timeout", "2", "--peer-cert"])
        .arg(id.join("server.cert.pem"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("fingerprint"));
    let _ = std::fs::remove_dir_all(&dir);
}
