//! The CLI as a user runs it: `serve` and `client` as two processes, and `demo`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_secmoe");

#[test]
fn help_lists_the_commands() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["demo", "run", "ranges", "keygen", "serve", "client"] {
        assert!(text.contains(cmd), "--help does not list {cmd}:\n{text}");
    }
}

#[test]
fn demo_runs_the_default_model_privately_next_to_the_plaintext() {
    let out = Command::new(BIN).args(["demo"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("estimated LAN") && text.contains("estimated WAN"), "{text}");
    assert!(text.contains("the same argmax at every position"), "{text}");
    // the server states how far the noise it returned is from weight-independent noise
    let flooding = text.lines().find(|l| l.contains("flooding:")).unwrap_or_else(|| panic!("{text}"));
    let exponent: f64 = flooding.rsplit("distance 2^").next().and_then(|r| r.split(' ').next()?.parse().ok()).unwrap();
    assert!(exponent < -40.0, "{flooding}");
    let out =
        Command::new(BIN).args(["demo", "--json", "--prompt-ids", "7,8", "--max-new-tokens", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["max_abs_logit_error", "argmax_match", "wall_s", "bytes", "rounds", "lan_s", "wan_s"] {
        assert!(!v[key].is_null(), "--json lacks {key}: {v}");
    }
    assert!(v["max_abs_logit_error"].as_f64().unwrap() < 0.05 && v["argmax_match"] == true, "{v}");
    assert_eq!(v["generated"].as_array().unwrap().len(), 1, "{v}");
    // the embedding as public: the client's own lookup replaces the oblivious product
    let public = Command::new(BIN)
        .args(["demo", "--json", "--prompt-ids", "7,8", "--max-new-tokens", "1", "--public-embedding"])
        .output()
        .unwrap();
    assert!(public.status.success(), "{}", String::from_utf8_lossy(&public.stderr));
    let p: serde_json::Value = serde_json::from_slice(&public.stdout).unwrap();
    assert!(p["max_abs_logit_error"].as_f64().unwrap() < 0.05 && p["argmax_match"] == true, "{p}");
    assert!(p["bytes"].as_u64().unwrap() < v["bytes"].as_u64().unwrap(), "{p} / {v}");
}

/// `ranges` on a server's checkpoint: the default model is within every range; with one
/// token's embedding 300× larger its norms' inputs are beyond, named, the command fails, and
/// `run` on that prompt warns before its private inference.
#[test]
fn ranges_checks_a_checkpoint_against_the_protocols_ranges() {
    let out = Command::new(BIN).args(["ranges", "--prompt-ids", "3,141,59", "--prompt-ids", "7"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("every value within its protocol's range"), "{text}");
    assert!(text.contains("on 2 prompt(s)") && text.contains("layers.1.router"), "{text}");
    let dir = std::env::temp_dir().join(format!("secmoe-ranges-test-{}", std::process::id()));
    common::write_default_checkpoint(&dir, |t| {
        let e = t.iter_mut().find(|t| t.name == "model.embed_tokens.weight").unwrap();
        let d = e.shape[1];
        e.values[141 * d..142 * d].iter_mut().for_each(|v| *v *= 300.0);
    });
    let out =
        Command::new(BIN).args(["ranges", "--json", "--prompt-ids", "3,141,59", "--model"]).arg(&dir).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let beyond: Vec<&str> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["exceeded"] == true)
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert!(beyond.contains(&"layers.0.attn_norm") && v["exceeded"].as_u64() == Some(beyond.len() as u64), "{v}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("beyond their protocol's range"));
    assert!(v["norm_range_bits_needed"].as_u64().is_some_and(|b| b > 6), "{v}");
    // checked against the range it needs, every site is within
    let needed = v["norm_range_bits_needed"].to_string();
    let out = Command::new(BIN)
        .args(["ranges", "--prompt-ids", "3,141,59", "--norm-range", &needed, "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new(BIN).args(["run", "--json", "--prompt-ids", "3,141", "--model"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: layers.0.attn_norm (norm input) reaches"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_takes_a_checkpoint_and_refuses_a_bad_one_by_name() {
    let dir = std::env::temp_dir().join(format!("secmoe-run-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let out = Command::new(BIN).args(["run", "--prompt-ids", "1,2", "--model"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("model_type `gpt2` is not supported"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint that ships `tokenizer.json`: `--prompt` text in, the generated tokens out as
/// text too (a word-level vocabulary `w0` … `w255` over the built-in model); without one,
/// `--prompt` is refused with the reason.
#[test]
fn run_tokenizes_a_text_prompt_with_the_checkpoints_tokenizer() {
    let dir = std::env::temp_dir().join(format!("secmoe-tokenizer-test-{}", std::process::id()));
    common::write_default_checkpoint(&dir, |_| {});
    let vocab: serde_json::Map<String, serde_json::Value> = (0..256).map(|i| (format!("w{i}"), i.into())).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    let no_tokenizer = Command::new(BIN).args(["run", "--prompt", "w3 w141", "--model"]).arg(&dir).output().unwrap();
    let err = String::from_utf8_lossy(&no_tokenizer.stderr);
    assert!(!no_tokenizer.status.success() && err.contains("tokenizer.json"), "{err}");
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--json", "--prompt", "w3 w141 w59", "--max-new-tokens", "2", "--model"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt_ids"], serde_json::json!([3, 141, 59]), "{v}");
    let generated: Vec<String> =
        v["generated"].as_array().unwrap().iter().map(|i| format!("w{}", i.as_u64().unwrap())).collect();
    assert_eq!(v["generated_text"], generated.join(" "), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn asking_for_a_backend_this_build_lacks_is_a_clear_error() {
    let out = Command::new(BIN).args(["demo", "--backend", "cuda"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("CUDA backend is not available"), "{err}");
    let out = Command::new(BIN).args(["bench", "--backend", "tpu"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown backend `tpu`"), "{err}");
}

/// An unknown MoE method is refused while the arguments are read, naming the methods there are.
#[test]
fn an_unknown_method_is_refused_with_the_known_ones() {
    let out = Command::new(BIN).args(["demo", "--method", "protocol-1"]).output().unwrap();
    let (err, printed) = (String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(!out.status.success() && printed.is_empty(), "{printed}");
    assert!(
        err.contains("unknown MoE method `protocol-1`") && err.contains("select-then-compute, select-rows"),
        "{err}"
    );
}

#[test]
fn serve_and_client_in_two_processes() {
    let dir = std::env::temp_dir().join(format!("secmoe-cli-test-{}", std::process::id()));
    let id = dir.join("id");
    let status = Command::new(BIN).args(["keygen", "--out"]).arg(&id).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    let mut server = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--once", "--identity"])
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
        .args(["client", "--connect", &addr, "--prompt-ids", "5,6,7", "--fingerprint", &fp, "--peer-cert"])
        .arg(id.join("server.cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "{text}\n{}", String::from_utf8_lossy(&client.stderr));
    assert!(text.contains("position    2 (token      7)") && text.contains("estimated WAN"), "{text}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = server.wait().unwrap();
    assert!(status.success());
    assert!(rest.iter().any(|l| l.contains("served 1 forward(s)")), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("flooding:")), "{rest:?}");

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

/// Writes `pem` to `dir/name`, creating `dir`.
fn write(dir: &std::path::Path, name: &str, pem: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// Starts `serve --once` with the identity in `id`; returns the process and its address.
fn serve_once(id: &std::path::Path) -> (std::process::Child, String) {
    let mut server = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--once", "--timeout", "5", "--identity"])
        .arg(id)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("secmoe server listening on ").map(|r| r.split_whitespace().next().unwrap().to_string())
        })
        .unwrap();
    // keep reading, so that the server's later lines find their pipe open
    std::thread::spawn(move || lines.for_each(drop));
    (server, addr)
}

/// The client trusts the pinned certificate and nothing else: not a certificate for the
/// server's name from an authority the client machine's trust store holds (here the store named
/// by SSL_CERT_FILE), and not another certificate signed by a pinned one.
#[test]
fn the_pin_admits_no_other_certificate() {
    let dir = std::env::temp_dir().join(format!("secmoe-pin-test-{}", std::process::id()));
    let genuine = dir.join("genuine");
    let status = Command::new(BIN).args(["keygen", "--out"]).arg(&genuine).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    // an authority the client's system store trusts, and its certificate for the server's name
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "an authority the client trusts");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params = rcgen::CertificateParams::new(vec![secmoe::net::SERVER_NAME.to_string()]).unwrap();
    leaf_params.distinguished_name.push(rcgen::DnType::CommonName, secmoe::net::SERVER_NAME);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let impostor = dir.join("impostor");
    write(&impostor, "server.cert.pem", &leaf.pem());
    write(&impostor, "server.key.pem", &leaf_key.serialize_pem());
    let ca = write(&dir, "ca.pem", &ca_cert.pem());
    let empty = dir.join("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    let (mut server, addr) = serve_once(&impostor);
    let client = |pin: &std::path::Path| {
        Command::new(BIN)
            .args(["client", "--connect", &addr, "--timeout", "5", "--peer-cert"])
            .arg(pin)
            .env("SSL_CERT_FILE", &ca)
            .env("SSL_CERT_DIR", &empty)
            .output()
            .unwrap()
    };
    // pinned: the genuine server's certificate; presented: the authority's, for the same name
    let out = client(&genuine.join("server.cert.pem"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("connecting to"), "{err}");
    // pinned: the authority itself; presented: a certificate it signed
    let out = client(&ca);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("other than the pinned one"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
    // a certificate file holding more than one block is refused before connecting
    let two = write(&dir, "two.pem", &format!("{}{}", leaf.pem(), ca_cert.pem()));
    let out = client(&two);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("exactly one PEM block"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The key file is private whether it existed before or not, and never written through a link.
#[cfg(unix)]
#[test]
fn keygen_makes_the_key_private_and_refuses_links() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("secmoe-keyfile-test-{}", std::process::id()));
    let key = write(&dir, "server.key.pem", "old");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let status = Command::new(BIN).args(["keygen", "--out"]).arg(&dir).stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let elsewhere = write(&dir, "elsewhere", "x");
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let out = Command::new(BIN).args(["keygen", "--out"]).arg(&dir).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "x");
    let _ = std::fs::remove_dir_all(&dir);
}
