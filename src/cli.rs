//! spoke's command line: what the binary was asked to do.
//!
//! `main.rs` hands the arguments (without the program name) to [`parse`] and acts on the
//! [`Command`] it gets back; nothing here reads files or prints. The flags are few, so
//! they are parsed by hand rather than with a parser crate. Arguments are taken as
//! `OsString`s because a config path need not be UTF-8, and `std::env::args` would
//! panic on one that is not.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

/// `--help` output.
pub const USAGE: &str = "\
spoke: a thread-per-core HTTP/1.1 load-balancing reverse proxy

Usage: spoke [--config PATH] [--check]

Options:
  --config PATH   read the configuration from PATH (default: ./config.json);
                  also --config=PATH
  --check         validate the configuration, print \"config ok\" or the problem,
                  and exit (0 when valid, 1 when not) without binding any port
  -h, --help      print this help and exit
  -V, --version   print the version and exit

SIGINT or SIGTERM stops the proxy gracefully; a second signal stops it at once.
";

/// `--version` output.
pub const VERSION: &str = concat!("spoke ", env!("CARGO_PKG_VERSION"));

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config.json";

/// What the binary was asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the proxy with the configuration at `config`.
    Run { config: PathBuf },
    /// Validate the configuration at `config`, then exit.
    Check { config: PathBuf },
    /// Print [`USAGE`].
    Help,
    /// Print [`VERSION`].
    Version,
}

/// A command line that could not be understood; its `Display` is the message for
/// stderr, without the `spoke: ` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CliError {
    /// An argument that is not one of spoke's flags.
    Unknown(String),
    /// `--config` with nothing after it, or `--config=`.
    MissingPath,
    /// `--config` given twice: which one was meant is anyone's guess.
    RepeatedConfig,
    /// A flag that takes no value given one, as in `--check=yes`.
    UnexpectedValue(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Unknown(arg) => write!(f, "unknown argument {arg:?} (see --help)"),
            CliError::MissingPath => f.write_str("--config needs a path (see --help)"),
            CliError::RepeatedConfig => f.write_str("--config given more than once"),
            CliError::UnexpectedValue(flag) => {
                write!(f, "{flag} takes no value (see --help)")
            }
        }
    }
}

impl std::error::Error for CliError {}

/// Parses the arguments after the program name.
///
/// `--help` and `--version` win as soon as they are seen, like most tools, so
/// `spoke --check --help` prints the help; an error before them is still an error.
pub fn parse<I, S>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            return Err(CliError::Unknown(arg.to_string_lossy().into_owned()));
        };
        let (flag, value) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (text, None),
        };
        let path = match (flag, value) {
            ("-h" | "--help", None) => return Ok(Command::Help),
            ("-V" | "--version", None) => return Ok(Command::Version),
            ("--check", None) => {
                check = true;
                continue;
            }
            ("--help" | "--version" | "--check", Some(_)) => {
                return Err(CliError::UnexpectedValue(flag.to_string()))
            }
            ("--config", Some(path)) => OsString::from(path),
            // The path is taken as it comes, so `--config -odd-name.json` works too.
            ("--config", None) => args.next().ok_or(CliError::MissingPath)?,
            _ => return Err(CliError::Unknown(text.to_string())),
        };
        if path.is_empty() {
            return Err(CliError::MissingPath);
        }
        if config.replace(PathBuf::from(path)).is_some() {
            return Err(CliError::RepeatedConfig);
        }
    }
    let config = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    Ok(if check {
        Command::Check { config }
    } else {
        Command::Run { config }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(path: &str) -> Result<Command, CliError> {
        Ok(Command::Run {
            config: PathBuf::from(path),
        })
    }

    fn check(path: &str) -> Result<Command, CliError> {
        Ok(Command::Check {
            config: PathBuf::from(path),
        })
    }

    #[test]
    fn commands() {
        let cases: &[(&[&str], Result<Command, CliError>)] = &[
            (&[], run("config.json")),
            (&["--config", "a.json"], run("a.json")),
            (&["--config=a.json"], run("a.json")),
            (&["--config=a=b.json"], run("a=b.json")),
            (&["--config", "-odd.json"], run("-odd.json")),
            (&["--check"], check("config.json")),
            (
                &["--check", "--config", "/etc/spoke.json"],
                check("/etc/spoke.json"),
            ),
            (&["--config=x.json", "--check"], check("x.json")),
            (&["--check", "--check"], check("config.json")),
            (&["--help"], Ok(Command::Help)),
            (&["-h"], Ok(Command::Help)),
            (&["--check", "--help"], Ok(Command::Help)),
            (&["--version"], Ok(Command::Version)),
            (&["-V"], Ok(Command::Version)),
        ];
        for (args, want) in cases {
            assert_eq!(&parse(args.iter().copied()), want, "{args:?}");
        }
    }

    #[test]
    fn errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--foo"], r#"unknown argument "--foo" (see --help)"#),
            (&["--foo=1"], r#"unknown argument "--foo=1" (see --help)"#),
            (
                &["config.json"],
                r#"unknown argument "config.json" (see --help)"#,
            ),
            (&["-c", "a.json"], r#"unknown argument "-c" (see --help)"#),
            (&["--help", "--foo"], ""),
            (
                &["--foo", "--help"],
                r#"unknown argument "--foo" (see --help)"#,
            ),
            (&["--config"], "--config needs a path (see --help)"),
            (&["--config="], "--config needs a path (see --help)"),
            (&["--config", ""], "--config needs a path (see --help)"),
            (
                &["--config", "a", "--config=b"],
                "--config given more than once",
            ),
            (&["--check=yes"], "--check takes no value (see --help)"),
            (&["--version=2"], "--version takes no value (see --help)"),
        ];
        for (args, want) in cases {
            match parse(args.iter().copied()) {
                Err(e) => assert_eq!(&e.to_string(), want, "{args:?}"),
                Ok(Command::Help) if want.is_empty() => {}
                Ok(other) => panic!("{args:?} gave {other:?}"),
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_path_need_not_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let path = OsString::from_vec(vec![b'a', 0xff, b'.', b'j']);
        let args = [OsString::from("--config"), path.clone()];
        assert_eq!(
            parse(args),
            Ok(Command::Run {
                config: PathBuf::from(path)
            })
        );
    }

    #[test]
    fn usage_and_version() {
        for flag in ["--config PATH", "--check", "--help", "--version"] {
            assert!(USAGE.contains(flag), "{flag}");
        }
        assert_eq!(VERSION, format!("spoke {}", env!("CARGO_PKG_VERSION")));
    }
}
