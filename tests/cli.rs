//! The `spoke` binary's `--check`: the sample config passes, a bad one is refused
//! with the field named.

use std::path::PathBuf;
use std::process::{Command, Output};

fn spoke(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(args)
        .output()
        .expect("run spoke")
}

/// A file in a directory of its own under the target's temp dir.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("config.json");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_accepts_the_sample_config() {
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/config.json");
    let out = spoke(&["--check", "--config", sample]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("config ok"), "{stdout}");
}

#[test]
fn check_rejects_a_bad_config_naming_the_field() {
    let path = temp_file(
        "bad-port",
        r#"{"port": 0, "backends": ["http://127.0.0.1:9000"]}"#,
    );
    let path = path.to_str().expect("utf-8 path");
    let out = spoke(&["--check", &format!("--config={path}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("\"port\""), "the field is named: {all}");
}

#[test]
fn check_rejects_an_unknown_field() {
    let path = temp_file(
        "typo",
        r#"{"stratgy": "round-robin", "backends": ["http://127.0.0.1:9000"]}"#,
    );
    let out = spoke(&["--check", "--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("stratgy"), "the unknown field is named: {all}");
}
