//! spoke's configuration: `config.json` read into a validated [`Config`].
//!
//! The binary reads the file once at start (`spoke --check` stops right after), so every
//! mistake has to surface here, as one line that names the field and the problem:
//! `config.json: "port": must be 1-65535, got 0`. That is why the text goes through a
//! [`serde_json::Value`] tree checked field by field, rather than a derived
//! `Deserialize` whose messages speak of Rust types: each check knows its field's name,
//! its range and what it expected. Reading the tree also refuses a key given twice,
//! which serde_json would otherwise settle silently in favour of the last one.
//!
//! Defaults live in one place, [`Config::default`], which is the contract's table.
//! [`parse_backend_url`] is shared with the admin API, so a backend added at runtime is
//! normalized exactly like one from the file and duplicates are caught either way.

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// How a worker picks a backend for a new request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Each alive backend in turn.
    RoundRobin,
    /// The alive backend with the fewest requests in flight.
    LeastConnections,
    /// The same client address always maps to the same alive backend.
    IpHash,
}

/// A token bucket per client IP address.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub requests_per_second: f64,
    /// Bucket size: how many requests a quiet client may send at once.
    pub burst: u32,
}

/// A backend's `http://host:port` address, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendUrl {
    /// The normalized text, `http://host:port` (no trailing slash, port always shown).
    pub text: String,
    /// The host name or IP literal, without brackets.
    pub host: String,
    /// The TCP port (80 when the URL names none).
    pub port: u16,
}

/// One entry of `backends`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Where the backend listens.
    pub url: BackendUrl,
    /// Relative share of traffic, 1-1000.
    pub weight: u32,
}

#[cfg(test)]
impl BackendSpec {
    /// `http://127.0.0.1:<port>` with weight 1, for the unit tests of the modules
    /// that build pools.
    pub(crate) fn local(port: u16) -> BackendSpec {
        BackendSpec {
            url: BackendUrl {
                text: format!("http://127.0.0.1:{port}"),
                host: "127.0.0.1".into(),
                port,
            },
            weight: 1,
        }
    }
}

/// The validated configuration. Field meanings are in the README's table.
#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub admin_port: u16,
    pub admin_bind: IpAddr,
    pub admin_token: Option<String>,
    /// Worker threads; 0 means one per core (resolved by the server, not here).
    pub workers: usize,
    pub strategy: Strategy,
    pub sticky_cookie: Option<String>,
    pub health_check_frequency: Duration,
    /// `None` means a plain TCP connect check.
    pub health_check_path: Option<String>,
    pub health_check_timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub client_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_retries: u32,
    pub backend_keepalive: usize,
    pub backend_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub rate_limit: Option<RateLimit>,
    pub log_level: log::LevelFilter,
    pub backends: Vec<BackendSpec>,
}

/// A configuration problem, printed as `config.json: "port": must be 1-65535, got 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in, as the user named it.
    pub source: String,
    /// The field at fault (`backends[1].weight`), or empty for the file as a whole.
    pub field: String,
    /// What is wrong, in a few words.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source, self.problem)
        } else {
            write!(f, "{}: \"{}\": {}", self.source, self.field, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The contract's table of defaults, with no backends.
impl Default for Config {
    fn default() -> Config {
        Config {
            port: 8080,
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            admin_port: 8081,
            // The admin API can add and remove backends: loopback unless the operator
            // deliberately opens it.
            admin_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_token: None,
            workers: 0,
            strategy: Strategy::RoundRobin,
            sticky_cookie: None,
            health_check_frequency: Duration::from_secs(10),
            health_check_path: Some("/".to_string()),
            health_check_timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            client_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            max_retries: 2,
            backend_keepalive: 32,
            backend_idle_timeout: Duration::from_secs(30),
            max_header_bytes: 16384,
            max_connections: 10000,
            rate_limit: None,
            log_level: log::LevelFilter::Info,
            backends: Vec::new(),
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let whole_file = |problem: String| ConfigError {
            source: source.clone(),
            field: String::new(),
            problem,
        };
        let bytes = std::fs::read(path).map_err(|e| whole_file(format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            whole_file(format!(
                "not UTF-8 text (bad byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        Config::parse(text, &source)
    }

    /// Parses and validates JSON text; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        read_json(text)
            .and_then(|root| from_value(&root))
            .map_err(|bad| ConfigError {
                source: source.to_string(),
                field: bad.field,
                problem: bad.problem,
            })
    }
}

/// A problem found while checking, before it is tied to a file.
struct Bad {
    field: String,
    problem: String,
}

type Check<T> = Result<T, Bad>;

fn bad(field: impl Into<String>, problem: impl Into<String>) -> Bad {
    Bad {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Every top-level key the file may have: the contract's table.
const FIELDS: &[&str] = &[
    "port",
    "bind",
    "admin_port",
    "admin_bind",
    "admin_token",
    "workers",
    "strategy",
    "sticky_cookie",
    "health_check_frequency",
    "health_check_path",
    "health_check_timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "connect_timeout",
    "request_timeout",
    "client_header_timeout",
    "idle_timeout",
    "shutdown_timeout",
    "max_retries",
    "backend_keepalive",
    "backend_idle_timeout",
    "max_header_bytes",
    "max_connections",
    "rate_limit",
    "log_level",
    "backends",
];

const STRATEGIES: &[(&str, Strategy)] = &[
    ("round-robin", Strategy::RoundRobin),
    ("least-connections", Strategy::LeastConnections),
    ("least-conn", Strategy::LeastConnections),
    ("ip-hash", Strategy::IpHash),
];

const LOG_LEVELS: &[(&str, log::LevelFilter)] = &[
    ("error", log::LevelFilter::Error),
    ("warn", log::LevelFilter::Warn),
    ("info", log::LevelFilter::Info),
    ("debug", log::LevelFilter::Debug),
    ("trace", log::LevelFilter::Trace),
];

/// Checks the whole tree. Unknown keys are reported first, since a misspelt key
/// (`"backend"`) would otherwise show up as a confusing "missing" elsewhere; then the
/// fields in the table's order, so the first problem reported is stable.
fn from_value(root: &Value) -> Check<Config> {
    let Value::Object(obj) = root else {
        return Err(bad(
            "",
            format!("must be a JSON object {{...}}, got {}", shown(root)),
        ));
    };
    reject_unknown(obj, "", FIELDS)?;
    let d = Config::default();
    let f = Fields(obj);
    let config = Config {
        port: f.get("port", d.port, |v| whole(v, 1, 65535))?,
        bind: f.get("bind", d.bind, ip)?,
        admin_port: f.get("admin_port", d.admin_port, |v| whole(v, 1, 65535))?,
        admin_bind: f.get("admin_bind", d.admin_bind, ip)?,
        admin_token: f.get("admin_token", d.admin_token, |v| {
            optional_text(v, check_token)
        })?,
        workers: f.get("workers", d.workers, |v| whole(v, 0, 1024))?,
        strategy: f.get("strategy", d.strategy, |v| one_of(v, STRATEGIES))?,
        sticky_cookie: f.get("sticky_cookie", d.sticky_cookie, |v| {
            optional_text(v, check_cookie_name)
        })?,
        health_check_frequency: f.get(
            "health_check_frequency",
            d.health_check_frequency,
            duration,
        )?,
        health_check_path: f.get("health_check_path", d.health_check_path, |v| {
            optional_text(v, check_path)
        })?,
        health_check_timeout: f.get("health_check_timeout", d.health_check_timeout, duration)?,
        healthy_threshold: f.get("healthy_threshold", d.healthy_threshold, |v| {
            whole(v, 1, 100)
        })?,
        unhealthy_threshold: f.get("unhealthy_threshold", d.unhealthy_threshold, |v| {
            whole(v, 1, 100)
        })?,
        connect_timeout: f.get("connect_timeout", d.connect_timeout, duration)?,
        request_timeout: f.get("request_timeout", d.request_timeout, duration)?,
        client_header_timeout: f.get("client_header_timeout", d.client_header_timeout, duration)?,
        idle_timeout: f.get("idle_timeout", d.idle_timeout, duration)?,
        shutdown_timeout: f.get("shutdown_timeout", d.shutdown_timeout, duration)?,
        max_retries: f.get("max_retries", d.max_retries, |v| whole(v, 0, 15))?,
        backend_keepalive: f.get("backend_keepalive", d.backend_keepalive, |v| {
            whole(v, 0, 10000)
        })?,
        backend_idle_timeout: f.get("backend_idle_timeout", d.backend_idle_timeout, duration)?,
        max_header_bytes: f.get("max_header_bytes", d.max_header_bytes, |v| {
            whole(v, 1024, 1_048_576)
        })?,
        max_connections: f.get("max_connections", d.max_connections, |v| {
            whole(v, 1, 1_000_000)
        })?,
        rate_limit: match obj.get("rate_limit") {
            None => d.rate_limit,
            Some(v) => rate_limit(v)?,
        },
        log_level: f.get("log_level", d.log_level, |v| one_of(v, LOG_LEVELS))?,
        backends: backends(obj.get("backends"))?,
    };
    check_listeners(&config)?;
    Ok(config)
}

/// The proxy's listeners use `SO_REUSEPORT`, so an admin listener on the same address
/// and port might not fail to bind: it would quietly take a share of the proxy's
/// connections. An unspecified address overlaps every other.
fn check_listeners(c: &Config) -> Check<()> {
    let overlap =
        c.bind == c.admin_bind || c.bind.is_unspecified() || c.admin_bind.is_unspecified();
    if c.port == c.admin_port && overlap {
        return Err(bad(
            "admin_port",
            format!(
                "must differ from \"port\" ({}) when both listen on {} and {}",
                c.port, c.bind, c.admin_bind
            ),
        ));
    }
    Ok(())
}

/// The top-level object, read field by field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// The default when `name` is absent, else its checked value.
    fn get<T>(
        &self,
        name: &str,
        default: T,
        check: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Check<T> {
        or_default(self.0.get(name), name, default, check)
    }
}

/// The default when the key is absent, else the checked value; a problem is tied to
/// `field`.
fn or_default<T>(
    value: Option<&Value>,
    field: &str,
    default: T,
    check: impl FnOnce(&Value) -> Result<T, String>,
) -> Check<T> {
    match value {
        None => Ok(default),
        Some(v) => check(v).map_err(|problem| bad(field, problem)),
    }
}

/// Refuses the first key of `obj` that is not in `known`; `prefix` is the object's
/// own field name, empty at the top level.
fn reject_unknown(obj: &Map<String, Value>, prefix: &str, known: &[&str]) -> Check<()> {
    match obj.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(bad(join(prefix, key), "unknown field")),
    }
}

/// `prefix.key`, with the key escaped so that a stray newline in it cannot break the
/// one-line error.
fn join(prefix: &str, key: &str) -> String {
    let quoted = Value::String(key.to_string()).to_string();
    let key = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted);
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// How a value the user wrote is quoted back in a problem: JSON text (so it stays on
/// one line), long strings cut short, lists and objects named rather than printed.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => quoted(s),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
        other => other.to_string(),
    }
}

fn quoted(s: &str) -> String {
    const MAX_CHARS: usize = 60;
    if s.chars().count() <= MAX_CHARS {
        Value::String(s.to_string()).to_string()
    } else {
        let cut: String = s.chars().take(MAX_CHARS).collect();
        format!("{}...", Value::String(cut))
    }
}

/// A whole number in `lo..=hi`, converted to the field's type. Integral floats such as
/// `1e6` are accepted: they are whole numbers, whatever the JSON spelling.
fn whole<T: TryFrom<u64>>(v: &Value, lo: u64, hi: u64) -> Result<T, String> {
    let Value::Number(n) = v else {
        return Err(format!("must be a whole number, got {}", shown(v)));
    };
    let value = match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => Some(u),
        (None, Some(f)) if f.fract() != 0.0 => {
            return Err(format!("must be a whole number, got {n}"));
        }
        // Negative, or too large for u64: out of range either way.
        (None, Some(f)) if f < 0.0 || f >= u64::MAX as f64 => None,
        (None, Some(f)) => Some(f as u64),
        (None, None) => None,
    };
    let range = if hi == u64::from(u32::MAX) {
        format!("at least {lo}")
    } else {
        format!("{lo}-{hi}")
    };
    value
        .filter(|u| (lo..=hi).contains(u))
        .and_then(|u| T::try_from(u).ok())
        .ok_or_else(|| format!("must be {range}, got {n}"))
}

fn ip(v: &Value) -> Result<IpAddr, String> {
    let problem = || {
        format!(
            "must be an IP address such as \"0.0.0.0\" or \"::\", got {}",
            shown(v)
        )
    };
    match v {
        Value::String(s) => s.parse().map_err(|_| problem()),
        _ => Err(problem()),
    }
}

fn one_of<T: Copy>(v: &Value, choices: &[(&str, T)]) -> Result<T, String> {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let names = names.join(", ");
    let Value::String(s) = v else {
        return Err(format!("must be one of {names}, got {}", shown(v)));
    };
    choices
        .iter()
        .find(|(name, _)| name == s)
        .map(|(_, value)| *value)
        .ok_or_else(|| format!("unknown value {}, expected one of {names}", quoted(s)))
}

/// `null` (the feature is off) or a non-empty string that passes `check`.
fn optional_text(
    v: &Value,
    check: fn(&str) -> Result<(), String>,
) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => {
            Err("must not be empty (use null to leave it unset)".to_string())
        }
        Value::String(s) => check(s).map(|()| Some(s.clone())),
        _ => Err(format!("must be a string or null, got {}", shown(v))),
    }
}

/// The token travels in an `Authorization` header, so only characters a header value
/// carries unchanged are allowed.
fn check_token(s: &str) -> Result<(), String> {
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err("must be printable ASCII without spaces".to_string())
    }
}

/// A cookie name is an RFC 6265 token (RFC 9110 section 5.6.2 `tchar`s).
fn check_cookie_name(s: &str) -> Result<(), String> {
    if s.bytes().all(is_tchar) {
        Ok(())
    } else {
        Err(format!(
            "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got {}",
            quoted(s)
        ))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The path goes verbatim into the check's request line, where a space or control
/// character would break the request.
fn check_path(s: &str) -> Result<(), String> {
    if !s.starts_with('/') {
        Err(format!("must start with \"/\", got {}", quoted(s)))
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        Err(format!(
            "must be printable ASCII without spaces, got {}",
            quoted(s)
        ))
    } else {
        Ok(())
    }
}

/// A duration string, or a JSON number of seconds.
fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(0.0);
            if secs <= 0.0 {
                return Err(format!("must be more than 0, got {n}"));
            }
            match Duration::try_from_secs_f64(secs) {
                Ok(d) if d.is_zero() => Err(format!("must be more than 0, got {n}")),
                Ok(d) => Ok(d),
                Err(_) => Err(format!("duration {n} is too large")),
            }
        }
        _ => Err(format!(
            "must be a duration such as \"2s\" or a number of seconds, got {}",
            shown(v)
        )),
    }
}

fn rate_limit(v: &Value) -> Check<Option<RateLimit>> {
    const FIELD: &str = "rate_limit";
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(obj) => obj,
        _ => {
            return Err(bad(
                FIELD,
                format!(
                "must be an object {{\"requests_per_second\": N, \"burst\": M}} or null, got {}",
                shown(v)
            ),
            ))
        }
    };
    reject_unknown(obj, FIELD, &["requests_per_second", "burst"])?;
    let rps_field = join(FIELD, "requests_per_second");
    let requests_per_second = match obj.get("requests_per_second") {
        None => return Err(bad(rps_field, "missing (required)")),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(rps) if rps > 0.0 && rps.is_finite() => rps,
            _ => return Err(bad(rps_field, format!("must be more than 0, got {n}"))),
        },
        Some(other) => {
            return Err(bad(
                rps_field,
                format!("must be a number, got {}", shown(other)),
            ))
        }
    };
    // A quiet client may send one second's worth at once; `as` saturates, and at
    // least one request must always fit.
    let default_burst = (requests_per_second.ceil() as u32).max(1);
    let burst = or_default(
        obj.get("burst"),
        &join(FIELD, "burst"),
        default_burst,
        |v| whole(v, 1, u64::from(u32::MAX)),
    )?;
    Ok(Some(RateLimit {
        requests_per_second,
        burst,
    }))
}

fn backends(v: Option<&Value>) -> Check<Vec<BackendSpec>> {
    const FIELD: &str = "backends";
    let list = match v {
        None => return Err(bad(FIELD, "missing (required)")),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(bad(
                FIELD,
                format!(
                    "must be a list of backend URLs (may be empty), got {}",
                    shown(other)
                ),
            ))
        }
    };
    let mut specs: Vec<BackendSpec> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let field = format!("{FIELD}[{i}]");
        let spec = backend(entry, &field)?;
        if let Some(first) = specs.iter().position(|s| s.url == spec.url) {
            return Err(bad(
                field,
                format!("duplicate of {FIELD}[{first}] ({})", spec.url.text),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// One entry of `backends`: `"http://h:p"` or `{"url": "http://h:p", "weight": N}`.
fn backend(entry: &Value, field: &str) -> Check<BackendSpec> {
    let url = |text: &str, field: &str| {
        parse_backend_url(text)
            .map_err(|problem| bad(field, format!("{problem}, got {}", quoted(text))))
    };
    match entry {
        Value::String(text) => Ok(BackendSpec {
            url: url(text, field)?,
            weight: 1,
        }),
        Value::Object(obj) => {
            reject_unknown(obj, field, &["url", "weight"])?;
            let url_field = join(field, "url");
            let url = match obj.get("url") {
                None => return Err(bad(url_field, "missing (required)")),
                Some(Value::String(text)) => url(text, &url_field)?,
                Some(other) => {
                    return Err(bad(
                        url_field,
                        format!("must be a string, got {}", shown(other)),
                    ))
                }
            };
            let weight = or_default(obj.get("weight"), &join(field, "weight"), 1, |v| {
                whole(v, 1, 1000)
            })?;
            Ok(BackendSpec { url, weight })
        }
        _ => Err(bad(
            field,
            format!(
                "must be a URL string or an object {{\"url\": ..., \"weight\": N}}, got {}",
                shown(entry)
            ),
        )),
    }
}

/// Parses the text into a tree, refusing a key given twice in any object.
fn read_json(text: &str) -> Check<Value> {
    // Some editors on Windows save a byte-order mark that JSON does not allow.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = TreeSeed {
        path: String::new(),
        duplicate: &duplicate,
    };
    let parsed = seed
        .deserialize(&mut de)
        .and_then(|tree| de.end().map(|()| tree));
    parsed.map_err(|e| {
        let at = format!("at line {} column {}", e.line(), e.column());
        match duplicate.take() {
            Some(path) => bad(path, format!("given more than once (again {at})")),
            None => {
                // serde_json appends the position to its message; it is moved to the
                // front, where the reader looks first.
                let message = e.to_string();
                let message = message.strip_suffix(&format!(" {at}")).unwrap_or(&message);
                bad("", format!("invalid JSON {at}: {message}"))
            }
        }
    })
}

/// Builds a [`Value`] like serde_json's own, but remembers where it is in the tree so
/// that a duplicate key can be reported by its field name.
struct TreeSeed<'a> {
    path: String,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for TreeSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TreeSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON text cannot spell a non-finite number, so `None` does not happen.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let seed = TreeSeed {
                path: format!("{}[{}]", self.path, items.len()),
                duplicate: self.duplicate,
            };
            match seq.next_element_seed(seed)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = join(&self.path, &key);
            if obj.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(path);
                return Err(de::Error::custom("duplicate key"));
            }
            let seed = TreeSeed {
                path,
                duplicate: self.duplicate,
            };
            let value = map.next_value_seed(seed)?;
            obj.insert(key, value);
        }
        Ok(Value::Object(obj))
    }
}

/// Parses a Go-style duration (`"500ms"`, `"1m30s"`); a bare number is seconds.
///
/// A duration is a sequence of `<number><unit>`, the number possibly with a fraction
/// (`"1.5s"`), the units `ns`, `us` (or `µs`), `ms`, `s`, `m` and `h`. It must be more
/// than zero: every duration spoke reads is a timeout or a period.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {} (use forms like \"500ms\", \"2s\", \"1m30s\")",
            quoted(text)
        )
    };
    let not_positive = || format!("must be more than 0, got {}", quoted(text));
    let too_large = || format!("duration {} is too large", quoted(text));

    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if body.is_empty() {
        return Err(invalid());
    }
    let bare_seconds = body.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let is_number = |c: char| c.is_ascii_digit() || c == '.';

    let mut nanos: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let (number, after) = rest.split_at(rest.find(|c| !is_number(c)).unwrap_or(rest.len()));
        let (unit, next) = after.split_at(after.find(is_number).unwrap_or(after.len()));
        let unit_nanos: u128 = match unit {
            "" if bare_seconds => 1_000_000_000,
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let element = match scaled(number, unit_nanos) {
            Ok(element) => element,
            Err(Overflow(true)) => return Err(too_large()),
            Err(Overflow(false)) => return Err(invalid()),
        };
        nanos = nanos.checked_add(element).ok_or_else(too_large)?;
        rest = next;
    }

    if negative || nanos == 0 {
        return Err(not_positive());
    }
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| too_large())
}

/// Why a duration's number could not be scaled: `true` when it was too large, `false`
/// when it was not a number at all.
struct Overflow(bool);

/// `number` (digits, maybe a fraction) times `unit_nanos`, in nanoseconds; a fraction
/// finer than a nanosecond is dropped, as Go does.
fn scaled(number: &str, unit_nanos: u128) -> Result<u128, Overflow> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_only(whole) || !digits_only(fraction) {
        return Err(Overflow(false));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        // Only digits are left, so the parse fails only on overflow.
        whole.parse().map_err(|_| Overflow(true))?
    };
    // 18 digits are finer than a nanosecond even for hours, and keep the product
    // below u128::MAX.
    let fraction = &fraction[..fraction.len().min(18)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let numerator: u128 = fraction.parse().map_err(|_| Overflow(false))?;
        numerator * unit_nanos / 10u128.pow(fraction.len() as u32)
    };
    whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or(Overflow(true))
}

/// Parses `http://host[:port][/]` into a [`BackendUrl`]; anything else is an error
/// that says what is wrong (used by config and by the admin API's POST /backends).
///
/// The scheme is case-insensitive, the host is lowercased (an IPv6 literal is also put
/// in its canonical form), and the port defaults to 80, so that two spellings of one
/// backend compare equal by their [`BackendUrl::text`].
pub fn parse_backend_url(text: &str) -> Result<BackendUrl, String> {
    if text.is_empty() {
        return Err("empty URL".to_string());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("white space or control characters are not allowed".to_string());
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("must start with http://".to_string());
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err("only http:// URLs are supported".to_string());
    }
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if tail.contains('#') {
        return Err("a fragment (#...) is not allowed".to_string());
    }
    if tail.contains('?') {
        return Err("a query (?...) is not allowed".to_string());
    }
    if !tail.is_empty() && tail != "/" {
        return Err("a path is not allowed, only http://host:port".to_string());
    }
    if authority.contains('@') {
        return Err("user info (user@) is not allowed".to_string());
    }

    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((literal, after)) = bracketed.split_once(']') else {
            return Err("missing \"]\" after the IPv6 address".to_string());
        };
        let address: Ipv6Addr = literal
            .parse()
            .map_err(|_| "invalid IPv6 address".to_string())?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err("unexpected text after \"]\"".to_string()),
            },
        };
        (address.to_string(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("an IPv6 address must be in brackets, as in http://[::1]:8080".to_string());
        }
        (check_host(host)?, port)
    };

    let port = match port {
        None => 80,
        Some("") => return Err("missing port number after \":\"".to_string()),
        Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => return Err("invalid port".to_string()),
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err("port must be 1-65535".to_string()),
        },
    };
    let text = if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    };
    Ok(BackendUrl { text, host, port })
}

/// A host name or IPv4 literal, lowercased.
fn check_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    let name_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    if !host.bytes().all(name_char)
        || host.starts_with(['.', '-'])
        || host.contains("..")
        || host.len() > 253
    {
        return Err("invalid host name".to_string());
    }
    // The resolver would read "10.1" or "010.0.0.1" as some other address: a host of
    // only digits and dots must be a plain dotted quad.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') && host.parse::<Ipv4Addr>().is_err() {
        return Err("invalid IPv4 address".to_string());
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        Config::parse(json, "config.json").map_err(|e| e.to_string())
    }

    fn problem(json: &str) -> String {
        match parse(json) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn every_default_is_the_contracts() {
        let c = parse(r#"{"backends": []}"#).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.bind, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.admin_port, 8081);
        assert_eq!(c.admin_bind, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.admin_token, None);
        assert_eq!(c.workers, 0);
        assert_eq!(c.strategy, Strategy::RoundRobin);
        assert_eq!(c.sticky_cookie, None);
        assert_eq!(c.health_check_frequency, secs(10));
        assert_eq!(c.health_check_path.as_deref(), Some("/"));
        assert_eq!(c.health_check_timeout, secs(2));
        assert_eq!(c.healthy_threshold, 1);
        assert_eq!(c.unhealthy_threshold, 1);
        assert_eq!(c.connect_timeout, secs(2));
        assert_eq!(c.request_timeout, secs(30));
        assert_eq!(c.client_header_timeout, secs(10));
        assert_eq!(c.idle_timeout, secs(60));
        assert_eq!(c.shutdown_timeout, secs(10));
        assert_eq!(c.max_retries, 2);
        assert_eq!(c.backend_keepalive, 32);
        assert_eq!(c.backend_idle_timeout, secs(30));
        assert_eq!(c.max_header_bytes, 16384);
        assert_eq!(c.max_connections, 10000);
        assert_eq!(c.rate_limit, None);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(c.backends.is_empty());
    }

    #[test]
    fn every_field_can_be_set() {
        let c = parse(
            r#"{
                "port": 80, "bind": "::", "admin_port": 9000, "admin_bind": "0.0.0.0",
                "admin_token": "s3cret", "workers": 4, "strategy": "least-conn",
                "sticky_cookie": "SPOKE_ID", "health_check_frequency": "1m30s",
                "health_check_path": null, "health_check_timeout": 0.5,
                "healthy_threshold": 3, "unhealthy_threshold": 100,
                "connect_timeout": "250ms", "request_timeout": "1h",
                "client_header_timeout": "5", "idle_timeout": 120,
                "shutdown_timeout": "1.5s", "max_retries": 0, "backend_keepalive": 0,
                "backend_idle_timeout": "90s", "max_header_bytes": 1024,
                "max_connections": 1e6, "rate_limit": {"requests_per_second": 2.5},
                "log_level": "trace",
                "backends": ["http://a:1", {"url": "http://[::1]:2", "weight": 1000}]
            }"#,
        )
        .unwrap();
        assert_eq!(c.port, 80);
        assert_eq!(c.bind, "::".parse::<IpAddr>().unwrap());
        assert_eq!(c.admin_port, 9000);
        assert_eq!(c.admin_bind, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.admin_token.as_deref(), Some("s3cret"));
        assert_eq!(c.workers, 4);
        assert_eq!(c.strategy, Strategy::LeastConnections);
        assert_eq!(c.sticky_cookie.as_deref(), Some("SPOKE_ID"));
        assert_eq!(c.health_check_frequency, secs(90));
        assert_eq!(c.health_check_path, None);
        assert_eq!(c.health_check_timeout, Duration::from_millis(500));
        assert_eq!((c.healthy_threshold, c.unhealthy_threshold), (3, 100));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.request_timeout, secs(3600));
        assert_eq!(c.client_header_timeout, secs(5));
        assert_eq!(c.idle_timeout, secs(120));
        assert_eq!(c.shutdown_timeout, Duration::from_millis(1500));
        assert_eq!((c.max_retries, c.backend_keepalive), (0, 0));
        assert_eq!(c.backend_idle_timeout, secs(90));
        assert_eq!(c.max_header_bytes, 1024);
        assert_eq!(c.max_connections, 1_000_000);
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                requests_per_second: 2.5,
                burst: 3
            })
        );
        assert_eq!(c.log_level, log::LevelFilter::Trace);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[0].url.text, "http://a:1");
        assert_eq!(c.backends[0].weight, 1);
        assert_eq!(c.backends[1].url.text, "http://[::1]:2");
        assert_eq!(c.backends[1].url.host, "::1");
        assert_eq!(c.backends[1].weight, 1000);
    }

    #[test]
    fn the_sample_config_is_valid() {
        let c = parse(include_str!("../config.json")).unwrap();
        assert_eq!((c.port, c.admin_port), (8080, 8081));
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.health_check_path.as_deref(), Some("/health"));
        assert_eq!(c.health_check_frequency, secs(5));
    }

    #[test]
    fn strategies_and_log_levels() {
        for (name, strategy) in [
            ("round-robin", Strategy::RoundRobin),
            ("least-connections", Strategy::LeastConnections),
            ("least-conn", Strategy::LeastConnections),
            ("ip-hash", Strategy::IpHash),
        ] {
            let json = format!(r#"{{"strategy": "{name}", "backends": []}}"#);
            assert_eq!(parse(&json).unwrap().strategy, strategy, "{name}");
        }
        for (name, level) in [
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
        ] {
            let json = format!(r#"{{"log_level": "{name}", "backends": []}}"#);
            assert_eq!(parse(&json).unwrap().log_level, level, "{name}");
        }
    }

    #[test]
    fn rate_limit_burst() {
        let limit = |json: &str| {
            let json = format!(r#"{{"rate_limit": {json}, "backends": []}}"#);
            parse(&json).unwrap().rate_limit
        };
        let burst = |json: &str| limit(json).map(|l| l.burst);
        assert_eq!(burst(r#"{"requests_per_second": 10}"#), Some(10));
        assert_eq!(burst(r#"{"requests_per_second": 0.2}"#), Some(1));
        assert_eq!(
            burst(r#"{"requests_per_second": 10, "burst": 50}"#),
            Some(50)
        );
        assert_eq!(limit("null"), None);
    }

    /// Every message the contract and the operators' docs rely on, word for word.
    #[test]
    fn error_messages() {
        let b = r#""backends": []"#;
        let cases: &[(String, &str)] = &[
            (
                format!(r#"{{"port": 0, {b}}}"#),
                r#"config.json: "port": must be 1-65535, got 0"#,
            ),
            (
                format!(r#"{{"port": 65536, {b}}}"#),
                r#"config.json: "port": must be 1-65535, got 65536"#,
            ),
            (
                format!(r#"{{"admin_port": -1, {b}}}"#),
                r#"config.json: "admin_port": must be 1-65535, got -1"#,
            ),
            (
                format!(r#"{{"port": 80.5, {b}}}"#),
                r#"config.json: "port": must be a whole number, got 80.5"#,
            ),
            (
                format!(r#"{{"workers": "4", {b}}}"#),
                r#"config.json: "workers": must be a whole number, got "4""#,
            ),
            (
                format!(r#"{{"workers": 1025, {b}}}"#),
                r#"config.json: "workers": must be 0-1024, got 1025"#,
            ),
            (
                format!(r#"{{"strategy": "fastest", {b}}}"#),
                r#"config.json: "strategy": unknown value "fastest", expected one of round-robin, least-connections, least-conn, ip-hash"#,
            ),
            (
                format!(r#"{{"strategy": 1, {b}}}"#),
                r#"config.json: "strategy": must be one of round-robin, least-connections, least-conn, ip-hash, got 1"#,
            ),
            (
                format!(r#"{{"log_level": "verbose", {b}}}"#),
                r#"config.json: "log_level": unknown value "verbose", expected one of error, warn, info, debug, trace"#,
            ),
            (
                format!(r#"{{"prot": 8080, {b}}}"#),
                r#"config.json: "prot": unknown field"#,
            ),
            (
                r#"{"port": 8080}"#.to_string(),
                r#"config.json: "backends": missing (required)"#,
            ),
            (
                r#"{"backends": "http://a:1"}"#.to_string(),
                r#"config.json: "backends": must be a list of backend URLs (may be empty), got "http://a:1""#,
            ),
            (
                r#"{"backends": ["http://a:1", {"url": "http://b:1", "weight": 0}]}"#.to_string(),
                r#"config.json: "backends[1].weight": must be 1-1000, got 0"#,
            ),
            (
                r#"{"backends": [{"url": "http://b:1", "weight": 1001}]}"#.to_string(),
                r#"config.json: "backends[0].weight": must be 1-1000, got 1001"#,
            ),
            (
                r#"{"backends": [{"url": "http://b:1", "wieght": 2}]}"#.to_string(),
                r#"config.json: "backends[0].wieght": unknown field"#,
            ),
            (
                r#"{"backends": [{"weight": 2}]}"#.to_string(),
                r#"config.json: "backends[0].url": missing (required)"#,
            ),
            (
                r#"{"backends": [8082]}"#.to_string(),
                r#"config.json: "backends[0]": must be a URL string or an object {"url": ..., "weight": N}, got 8082"#,
            ),
            (
                r#"{"backends": ["http://127.0.0.1:8082", "http://127.0.0.1:8083", "http://127.0.0.1:8082/"]}"#.to_string(),
                r#"config.json: "backends[2]": duplicate of backends[0] (http://127.0.0.1:8082)"#,
            ),
            (
                r#"{"backends": ["HTTP://LOCALHOST", {"url": "http://localhost:80/"}]}"#.to_string(),
                r#"config.json: "backends[1]": duplicate of backends[0] (http://localhost:80)"#,
            ),
            (
                r#"{"backends": ["https://a:1"]}"#.to_string(),
                r#"config.json: "backends[0]": only http:// URLs are supported, got "https://a:1""#,
            ),
            (
                r#"{"backends": [{"url": "http://a:0"}]}"#.to_string(),
                r#"config.json: "backends[0].url": port must be 1-65535, got "http://a:0""#,
            ),
            (
                format!(r#"{{"connect_timeout": "2x", {b}}}"#),
                r#"config.json: "connect_timeout": invalid duration "2x" (use forms like "500ms", "2s", "1m30s")"#,
            ),
            (
                format!(r#"{{"idle_timeout": "0s", {b}}}"#),
                r#"config.json: "idle_timeout": must be more than 0, got "0s""#,
            ),
            (
                format!(r#"{{"idle_timeout": 0, {b}}}"#),
                r#"config.json: "idle_timeout": must be more than 0, got 0"#,
            ),
            (
                format!(r#"{{"idle_timeout": true, {b}}}"#),
                r#"config.json: "idle_timeout": must be a duration such as "2s" or a number of seconds, got true"#,
            ),
            (
                format!(r#"{{"bind": "localhost", {b}}}"#),
                r#"config.json: "bind": must be an IP address such as "0.0.0.0" or "::", got "localhost""#,
            ),
            (
                format!(r#"{{"admin_token": "", {b}}}"#),
                r#"config.json: "admin_token": must not be empty (use null to leave it unset)"#,
            ),
            (
                format!(r#"{{"admin_token": "a b", {b}}}"#),
                r#"config.json: "admin_token": must be printable ASCII without spaces"#,
            ),
            (
                format!(r#"{{"admin_token": 5, {b}}}"#),
                r#"config.json: "admin_token": must be a string or null, got 5"#,
            ),
            (
                format!(r#"{{"sticky_cookie": "a;b", {b}}}"#),
                r#"config.json: "sticky_cookie": must be a cookie name (letters, digits and !#$%&'*+-.^_`|~), got "a;b""#,
            ),
            (
                format!(r#"{{"health_check_path": "health", {b}}}"#),
                r#"config.json: "health_check_path": must start with "/", got "health""#,
            ),
            (
                format!(r#"{{"health_check_path": "/a b", {b}}}"#),
                r#"config.json: "health_check_path": must be printable ASCII without spaces, got "/a b""#,
            ),
            (
                format!(r#"{{"healthy_threshold": 0, {b}}}"#),
                r#"config.json: "healthy_threshold": must be 1-100, got 0"#,
            ),
            (
                format!(r#"{{"unhealthy_threshold": 101, {b}}}"#),
                r#"config.json: "unhealthy_threshold": must be 1-100, got 101"#,
            ),
            (
                format!(r#"{{"max_retries": 16, {b}}}"#),
                r#"config.json: "max_retries": must be 0-15, got 16"#,
            ),
            (
                format!(r#"{{"backend_keepalive": 10001, {b}}}"#),
                r#"config.json: "backend_keepalive": must be 0-10000, got 10001"#,
            ),
            (
                format!(r#"{{"max_header_bytes": 1023, {b}}}"#),
                r#"config.json: "max_header_bytes": must be 1024-1048576, got 1023"#,
            ),
            (
                format!(r#"{{"max_connections": 0, {b}}}"#),
                r#"config.json: "max_connections": must be 1-1000000, got 0"#,
            ),
            (
                format!(r#"{{"rate_limit": 10, {b}}}"#),
                r#"config.json: "rate_limit": must be an object {"requests_per_second": N, "burst": M} or null, got 10"#,
            ),
            (
                format!(r#"{{"rate_limit": {{"burst": 5}}, {b}}}"#),
                r#"config.json: "rate_limit.requests_per_second": missing (required)"#,
            ),
            (
                format!(r#"{{"rate_limit": {{"requests_per_second": 0}}, {b}}}"#),
                r#"config.json: "rate_limit.requests_per_second": must be more than 0, got 0"#,
            ),
            (
                format!(r#"{{"rate_limit": {{"requests_per_second": "5"}}, {b}}}"#),
                r#"config.json: "rate_limit.requests_per_second": must be a number, got "5""#,
            ),
            (
                format!(r#"{{"rate_limit": {{"requests_per_second": 5, "burst": 0}}, {b}}}"#),
                r#"config.json: "rate_limit.burst": must be at least 1, got 0"#,
            ),
            (
                format!(r#"{{"rate_limit": {{"requests_per_second": 5, "brust": 9}}, {b}}}"#),
                r#"config.json: "rate_limit.brust": unknown field"#,
            ),
            (
                format!(r#"{{"port": 1, "port": 2, {b}}}"#),
                r#"config.json: "port": given more than once (again at line 1 column 18)"#,
            ),
            (
                "{\n  \"port\": 8080,\n    ,\n}".to_string(),
                r#"config.json: invalid JSON at line 3 column 5: key must be a string"#,
            ),
            (
                "".to_string(),
                "config.json: invalid JSON at line 1 column 0: EOF while parsing a value",
            ),
            (
                format!(r#"{{{b}}} x"#),
                "config.json: invalid JSON at line 1 column 18: trailing characters",
            ),
            (
                r#"{"port": 9000, "admin_port": 9000, "backends": []}"#.to_string(),
                r#"config.json: "admin_port": must differ from "port" (9000) when both listen on 0.0.0.0 and 127.0.0.1"#,
            ),
            (
                "[]".to_string(),
                "config.json: must be a JSON object {...}, got a list",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(&problem(json), expected, "for {json}");
        }
    }

    #[test]
    fn an_error_is_one_line_even_for_odd_input() {
        let e = problem("{\"po\\nrt\": 1, \"backends\": [\"http://a\\n:1\"]}");
        assert_eq!(e, r#"config.json: "po\nrt": unknown field"#);
        let e = problem("{\"backends\": [\"http://a\\n:1\"]}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn one_port_on_two_distinct_addresses_is_fine() {
        let json = r#"{"port": 9000, "bind": "10.0.0.1", "admin_port": 9000, "backends": []}"#;
        assert_eq!(parse(json).unwrap().admin_port, 9000);
    }

    #[test]
    fn unknown_fields_are_reported_before_other_problems() {
        assert_eq!(
            problem(r#"{"port": 0, "backend": []}"#),
            r#"config.json: "backend": unknown field"#
        );
    }

    #[test]
    fn load_names_the_file_as_given() {
        let e = Config::load(Path::new("no/such/spoke.json")).unwrap_err();
        assert_eq!(e.source, "no/such/spoke.json");
        assert_eq!(e.field, "");
        assert!(
            e.to_string()
                .starts_with("no/such/spoke.json: cannot read: "),
            "{e}"
        );

        let path = std::env::temp_dir().join(format!("spoke-config-{}.json", std::process::id()));
        std::fs::write(&path, "\u{feff}{\"backends\": [\"http://a:1\"]}").unwrap();
        let loaded = Config::load(&path);
        std::fs::write(&path, [b'{', 0xff, b'}']).unwrap();
        let not_utf8 = Config::load(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded.unwrap().backends[0].url.text, "http://a:1");
        assert_eq!(
            not_utf8.unwrap_err().problem,
            "not UTF-8 text (bad byte at offset 1)"
        );
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let ok: &[(&str, Duration)] = &[
            ("500ms", ms(500)),
            ("2s", secs(2)),
            ("1m30s", secs(90)),
            ("1h", secs(3600)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", secs(1)),
            ("0.25h", secs(900)),
            ("1500us", ms(1) + Duration::from_micros(500)),
            ("1µs", Duration::from_micros(1)),
            ("1μs", Duration::from_micros(1)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000009s", secs(1)),
            ("2", secs(2)),
            ("0.1", ms(100)),
            ("+3s", secs(3)),
            ("0s1ns", Duration::from_nanos(1)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text).as_ref(), Ok(want), "{text:?}");
        }
        let invalid = |t: &str| {
            format!("invalid duration \"{t}\" (use forms like \"500ms\", \"2s\", \"1m30s\")")
        };
        let bad: &[(&str, String)] = &[
            ("", invalid("")),
            ("2x", invalid("2x")),
            ("s", invalid("s")),
            ("1S", invalid("1S")),
            ("1s5", invalid("1s5")),
            ("1 s", invalid("1 s")),
            (" 1s", invalid(" 1s")),
            ("1.2.3s", invalid("1.2.3s")),
            (".s", invalid(".s")),
            ("-", invalid("-")),
            ("1d", invalid("1d")),
            ("0", "must be more than 0, got \"0\"".into()),
            ("0s", "must be more than 0, got \"0s\"".into()),
            ("0.1ns", "must be more than 0, got \"0.1ns\"".into()),
            ("-1s", "must be more than 0, got \"-1s\"".into()),
            ("6000000h", "duration \"6000000h\" is too large".into()),
            (
                "99999999999999999999999999999999999999999s",
                "duration \"99999999999999999999999999999999999999999s\" is too large".into(),
            ),
        ];
        for (text, want) in bad {
            assert_eq!(parse_duration(text).as_ref(), Err(want), "{text:?}");
        }
    }

    #[test]
    fn backend_urls() {
        let ok: &[(&str, &str, &str, u16)] = &[
            (
                "http://127.0.0.1:8082",
                "http://127.0.0.1:8082",
                "127.0.0.1",
                8082,
            ),
            (
                "http://127.0.0.1:8082/",
                "http://127.0.0.1:8082",
                "127.0.0.1",
                8082,
            ),
            (
                "HTTP://LOCALHOST:9001/",
                "http://localhost:9001",
                "localhost",
                9001,
            ),
            (
                "http://localhost:9001",
                "http://localhost:9001",
                "localhost",
                9001,
            ),
            (
                "http://example.com",
                "http://example.com:80",
                "example.com",
                80,
            ),
            (
                "http://web-1.svc_a.local:1",
                "http://web-1.svc_a.local:1",
                "web-1.svc_a.local",
                1,
            ),
            ("http://[::1]:8080", "http://[::1]:8080", "::1", 8080),
            ("http://[::1]", "http://[::1]:80", "::1", 80),
            ("http://[0:0::1]:65535/", "http://[::1]:65535", "::1", 65535),
            ("http://[FE80::A]:1", "http://[fe80::a]:1", "fe80::a", 1),
        ];
        for (text, normal, host, port) in ok {
            let url = parse_backend_url(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (url.text.as_str(), url.host.as_str(), url.port),
                (*normal, *host, *port),
                "{text}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty URL"),
            (
                " http://a:1",
                "white space or control characters are not allowed",
            ),
            (
                "http://a:1 ",
                "white space or control characters are not allowed",
            ),
            ("127.0.0.1:8080", "must start with http://"),
            ("https://a:1", "only http:// URLs are supported"),
            ("ftp://a", "only http:// URLs are supported"),
            ("http://", "missing host"),
            ("http://:8080", "missing host"),
            ("http:///", "missing host"),
            ("http://user@a:1", "user info (user@) is not allowed"),
            ("http://user:pw@a:1", "user info (user@) is not allowed"),
            (
                "http://a:1/api",
                "a path is not allowed, only http://host:port",
            ),
            (
                "http://a:1//",
                "a path is not allowed, only http://host:port",
            ),
            ("http://a:1?x=1", "a query (?...) is not allowed"),
            ("http://a:1/?x", "a query (?...) is not allowed"),
            ("http://a:1#top", "a fragment (#...) is not allowed"),
            ("http://a:", "missing port number after \":\""),
            ("http://a:8o", "invalid port"),
            ("http://a:-1", "invalid port"),
            ("http://a:0", "port must be 1-65535"),
            ("http://a:65536", "port must be 1-65535"),
            ("http://a:99999999999999999999", "port must be 1-65535"),
            (
                "http://::1:80",
                "an IPv6 address must be in brackets, as in http://[::1]:8080",
            ),
            ("http://[::1", "missing \"]\" after the IPv6 address"),
            ("http://[::g]:1", "invalid IPv6 address"),
            ("http://[::1]x", "unexpected text after \"]\""),
            ("http://a%20b:1", "invalid host name"),
            ("http://-a:1", "invalid host name"),
            ("http://a..b:1", "invalid host name"),
            ("http://10.1:1", "invalid IPv4 address"),
            ("http://256.0.0.1:1", "invalid IPv4 address"),
        ];
        for (text, want) in bad {
            assert_eq!(
                parse_backend_url(text).as_ref(),
                Err(&want.to_string()),
                "{text:?}"
            );
        }
    }
}
