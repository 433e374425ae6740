//! The `spoke` binary's command line, run for real: `--check` on good and bad files,
//! `--help`, `--version` and unknown flags, with their output and exit status.
//!
//! Running the proxy itself is covered by the server's tests; nothing here binds a port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory per test, removed on drop, so tests running in parallel never
/// see each other's files.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("spoke-cli-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `spoke` in `dir` with `args`.
fn spoke(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spoke"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `--check` on `json`: the exit status, and the single line it printed.
fn check(json: &str) -> (Option<i32>, String) {
    let dir = TempDir::new();
    dir.write("spoke.json", json);
    let out = spoke(&dir.0, &["--check", "--config", "spoke.json"]);
    (out.status.code(), stdout(&out) + &stderr(&out))
}

#[test]
fn check_accepts_the_sample_config() {
    let sample = include_str!("../config.json");
    let dir = TempDir::new();
    dir.write("config.json", sample);
    // Without --config the file in the working directory is read.
    for args in [&["--check"][..], &["--check", "--config=config.json"]] {
        let out = spoke(&dir.0, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "config ok\n");
        assert_eq!(stderr(&out), "");
    }
}

#[test]
fn check_rejects_a_bad_port_naming_the_field() {
    let dir = TempDir::new();
    dir.write("bad.json", r#"{"port": 0, "backends": []}"#);
    let out = spoke(&dir.0, &["--check", "--config", "bad.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), "bad.json: \"port\": must be 1-65535, got 0\n");
}

#[test]
fn check_rejects_an_unknown_field() {
    let (code, output) = check(r#"{"prot": 8080, "backends": []}"#);
    assert_eq!(code, Some(1));
    assert_eq!(output, "spoke.json: \"prot\": unknown field\n");
}

#[test]
fn check_rejects_a_bad_strategy() {
    let (code, output) = check(r#"{"strategy": "fastest", "backends": []}"#);
    assert_eq!(code, Some(1));
    assert!(output.contains("\"strategy\""), "{output}");
    assert!(output.contains("unknown value \"fastest\""), "{output}");
}

#[test]
fn check_rejects_missing_backends_and_bad_json() {
    let (code, output) = check(r#"{"port": 8080}"#);
    assert_eq!(
        (code, output.as_str()),
        (Some(1), "spoke.json: \"backends\": missing (required)\n")
    );
    let (code, output) = check("{\"port\": 8080,}");
    assert_eq!(code, Some(1));
    assert!(
        output.starts_with("spoke.json: invalid JSON at line 1 column 15: "),
        "{output}"
    );
}

#[test]
fn check_reports_a_missing_file() {
    let dir = TempDir::new();
    let out = spoke(&dir.0, &["--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("config.json: cannot read: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_and_version() {
    let dir = TempDir::new();
    for flag in ["--help", "-h"] {
        let out = spoke(&dir.0, &[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("--config PATH"), "{}", stdout(&out));
        assert!(stdout(&out).contains("--check"));
    }
    for flag in ["--version", "-V"] {
        let out = spoke(&dir.0, &[flag]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(
            stdout(&out),
            format!("spoke {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn an_unknown_flag_is_an_error() {
    let dir = TempDir::new();
    let out = spoke(&dir.0, &["--foo"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "spoke: unknown argument \"--foo\" (see --help)\n"
    );
    let out = spoke(&dir.0, &["--config"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "spoke: --config needs a path (see --help)\n");
}

/// Running (not checking) with a bad file fails before anything starts.
#[test]
fn running_with_a_bad_config_exits_1() {
    let dir = TempDir::new();
    dir.write("config.json", r#"{"port": 0, "backends": []}"#);
    let out = spoke(&dir.0, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "config.json: \"port\": must be 1-65535, got 0\n"
    );
}
