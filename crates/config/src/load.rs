//! Loading: embedded defaults < TOML file < `ATRUND_*` environment, merged as TOML tables and then
//! deserialised once into [`Config`].
//!
//! Owns: the key schema (derived from the serialised defaults, plus [`OPTIONAL_KEYS`] for keys
//! that default to unset), env-name mapping, env value parsing, provenance tracking, and turning
//! serde errors into errors that name the key. Must not touch: validation rules (see `validate`).
//! `serde_path_to_error` is used so that a bad value deep in the table still names its key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use toml::{Table, Value};

use crate::error::Provenance;
use crate::layout::{FALLBACK_DATA_DIR, ROOT_DATA_DIR};
use crate::{Config, ConfigError, Source};

/// Prefix of every environment variable at-rund reads.
pub const ENV_PREFIX: &str = "ATRUND_";

/// `ATRUND_*` variables that are not config keys and so are not refused as typos. A trailing `*`
/// means the prefix.
pub const ENV_EXCEPTIONS: &[&str] = &["ATRUND_LOG", "ATRUND_CONFIG", "ATRUND_TEST_*"];

/// Keys that default to unset (so they are absent from the serialised defaults) and their kind.
const OPTIONAL_KEYS: &[(&str, Kind)] = &[
    ("identity.handle_resolver", Kind::Str),
    ("deno.path", Kind::Str),
    ("node.path", Kind::Str),
    ("python.path", Kind::Str),
    ("secrets.key_file", Kind::Str),
    ("http.bundle_domain", Kind::Str),
    ("logs.service_did", Kind::Str),
    ("trust.operator", Kind::Str),
    ("dns_server", Kind::Str),
    ("extra_ca_file", Kind::Str),
    ("microvm.kernel", Kind::Str),
];

/// Keys an older version read under another name: `(old, new)`. Refused with the new name (not
/// read as aliases: one setting, one name).
const MOVED_KEYS: &[(&str, &str)] = &[
    // Both backends run instances as this identity now, not only `none`.
    ("none.run_as_uid", "sandbox.run_as_uid"),
    ("none.run_as_gid", "sandbox.run_as_gid"),
];

/// The moved key `path` names, or one of the keys of the table `v` at `path`.
fn moved_key(path: &str, v: &Value) -> Option<(&'static str, &'static str)> {
    MOVED_KEYS.iter().copied().find(|(old, _)| {
        *old == path || matches!(v, Value::Table(t) if t.keys().any(|k| join(path, k) == *old))
    })
}

/// Type of a leaf key, taken from its default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    UInt,
    /// A number such as 0.25 (a whole number is taken too).
    Float,
    Bool,
    StrList,
    /// `"open"` or a list of strings.
    Policy,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::UInt => "a whole number (0 or more)",
            Kind::Float => "a number such as 0.25",
            Kind::Bool => "true or false",
            Kind::StrList => "a list of strings",
            Kind::Policy => "\"open\" or a list of DIDs and handles",
        }
    }

    fn expected_env(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::UInt => "a whole number (0 or more), such as 3000",
            Kind::Float => "a number such as 0.25",
            Kind::Bool => "1, 0, true or false",
            Kind::StrList => "a comma-separated list such as a,b (or empty for none)",
            Kind::Policy => "open, or a comma-separated list of DIDs and handles",
        }
    }
}

/// Every leaf key (dotted path) and its kind.
struct Schema(BTreeMap<String, Kind>);

impl Schema {
    fn from_defaults(defaults: &Table) -> Schema {
        fn walk(t: &Table, prefix: &str, out: &mut BTreeMap<String, Kind>) {
            for (k, v) in t {
                let path = join(prefix, k);
                let kind = match v {
                    Value::Table(sub) => {
                        walk(sub, &path, out);
                        continue;
                    }
                    _ if path == "policy" => Kind::Policy,
                    Value::Integer(_) => Kind::UInt,
                    Value::Float(_) => Kind::Float,
                    Value::Boolean(_) => Kind::Bool,
                    Value::Array(_) => Kind::StrList,
                    _ => Kind::Str,
                };
                out.insert(path, kind);
            }
        }
        let mut out = BTreeMap::new();
        walk(defaults, "", &mut out);
        for (k, kind) in OPTIONAL_KEYS {
            out.insert((*k).to_string(), *kind);
        }
        Schema(out)
    }

    fn is_section(&self, path: &str) -> bool {
        let p = format!("{path}.");
        self.0.keys().any(|k| k.starts_with(&p))
    }

    /// Names directly under `prefix` (for "known keys here").
    fn children(&self, prefix: &str) -> String {
        let mut names: Vec<&str> = self
            .0
            .keys()
            .filter_map(|k| {
                let rest = if prefix.is_empty() {
                    k.as_str()
                } else {
                    k.strip_prefix(prefix)?.strip_prefix('.')?
                };
                rest.split('.').next()
            })
            .collect();
        names.dedup();
        names.join(", ")
    }
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_string()
    } else {
        format!("{prefix}.{k}")
    }
}

/// The environment variable that sets a dotted key: `limits.timeout_ms.max` →
/// `ATRUND_LIMITS_TIMEOUT_MS_MAX`.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Every settable `(environment variable, dotted key)` pair, sorted by key.
pub fn known_env_vars() -> Result<Vec<(String, String)>, ConfigError> {
    let defaults = defaults_table(&HashMap::new())?.0;
    Ok(Schema::from_defaults(&defaults)
        .0
        .into_keys()
        .map(|k| (env_var_name(&k), k))
        .collect())
}

fn is_exempt(var: &str) -> bool {
    ENV_EXCEPTIONS.iter().any(|e| match e.strip_suffix('*') {
        Some(prefix) => var.starts_with(prefix),
        None => var == *e,
    })
}

/// The process environment as UTF-8 pairs. Non-UTF-8 variables are skipped, except `ATRUND_*`
/// ones, which are an error (skipping them would silently ignore a setting).
pub fn process_env() -> Result<HashMap<String, String>, ConfigError> {
    let mut out = HashMap::new();
    for (k, v) in std::env::vars_os() {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => {
                out.insert(k, v);
            }
            (Ok(k), Err(_)) if k.starts_with(ENV_PREFIX) => {
                return Err(ConfigError::BadValue {
                    key: k.clone(),
                    origin: Source::Env(k),
                    message: "the value is not valid UTF-8; set it to UTF-8 text".into(),
                });
            }
            (Err(k), _) if k.to_string_lossy().starts_with(ENV_PREFIX) => {
                return Err(ConfigError::UnknownEnv {
                    var: k.to_string_lossy().into_owned(),
                    hint: " (its name is not valid UTF-8)".into(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `data_dir` from the environment: `$XDG_DATA_HOME/at-rund`, else `/var/lib/at-rund` when `HOME`
/// is `/root`, else `$HOME/.local/share/at-rund`, else `./.at-rund-data`. Relative or empty values are ignored, as the XDG spec says.
fn default_data_dir(env: &HashMap<String, String>) -> (String, Source) {
    let abs = |var: &str| {
        env.get(var)
            .filter(|v| Path::new(v.as_str()).is_absolute())
            .cloned()
    };
    if let Some(x) = abs("XDG_DATA_HOME") {
        let p = Path::new(&x).join("at-rund");
        return (
            p.to_string_lossy().into_owned(),
            Source::Computed("from XDG_DATA_HOME".into()),
        );
    }
    if let Some(h) = abs("HOME") {
        // root's home is closed (0700) to the uid `none` instances run as, so a root runner keeps
        // its data where system services do.
        if Path::new(&h) == Path::new("/root") {
            return (
                ROOT_DATA_DIR.to_string(),
                Source::Computed("HOME is /root: a system service's data dir".into()),
            );
        }
        let p = Path::new(&h).join(".local/share/at-rund");
        return (
            p.to_string_lossy().into_owned(),
            Source::Computed("from HOME".into()),
        );
    }
    (
        FALLBACK_DATA_DIR.to_string(),
        Source::Computed("neither XDG_DATA_HOME nor HOME is set".into()),
    )
}

/// The embedded defaults as a table, with `data_dir` computed from `env`.
fn defaults_table(env: &HashMap<String, String>) -> Result<(Table, Provenance), ConfigError> {
    let mut table = match Value::try_from(Config::default()) {
        Ok(Value::Table(t)) => t,
        Ok(_) => return Err(ConfigError::Internal("defaults are not a table".into())),
        Err(e) => return Err(ConfigError::Internal(e.to_string())),
    };
    let (dir, src) = default_data_dir(env);
    table.insert("data_dir".into(), Value::String(dir));
    let mut prov = Provenance::default();
    prov.set("data_dir", src);
    Ok((table, prov))
}

impl Config {
    /// Loads defaults, then the file at `path` (if any), then `ATRUND_*` variables from `env`,
    /// and validates the result. `env` is any iterator of pairs: `&HashMap<String, String>`,
    /// [`process_env()`]'s map, or `std::env::vars()`. `HOME` and `XDG_DATA_HOME` are read from
    /// it too.
    pub fn load<I, K, V>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let file = match path {
            None => None,
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => Some((p, text)),
                Err(e) => {
                    return Err(ConfigError::Unreadable {
                        path: p.to_path_buf(),
                        message: e.to_string(),
                    })
                }
            },
        };
        Config::load_str(file.as_ref().map(|(p, t)| (*p, t.as_str())), env)
    }

    /// Like [`Config::load`], with the file's text given (`(name for messages, text)`).
    pub fn load_str<I, K, V>(file: Option<(&Path, &str)>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let env: HashMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        let (mut table, mut prov) = defaults_table(&env)?;
        let schema = Schema::from_defaults(&table);

        if let Some((path, text)) = file {
            let over: Table = text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Toml {
                    path: path.to_path_buf(),
                    message: e.message().trim().replace('\n', ": ") + &line_of(text, e.span()),
                })?;
            let src = Source::File(path.to_path_buf());
            overlay(&mut table, over, "", &schema, &src, &mut prov)?;
        }

        // Sorted so that the first error reported does not depend on hash order.
        let atrund: BTreeMap<&String, &String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !is_exempt(k))
            .collect();
        let by_var: HashMap<String, (&String, Kind)> = schema
            .0
            .iter()
            .map(|(k, kind)| (env_var_name(k), (k, *kind)))
            .collect();
        for (var, raw) in atrund {
            let Some((key, kind)) = by_var.get(var.as_str()) else {
                let moved = MOVED_KEYS
                    .iter()
                    .find(|(old, _)| env_var_name(old) == *var)
                    .map(|(_, new)| format!(" (it is now {})", env_var_name(new)));
                return Err(ConfigError::UnknownEnv {
                    var: var.clone(),
                    hint: moved.unwrap_or_else(|| suggest(var, by_var.keys())),
                });
            };
            let src = Source::Env(var.clone());
            match parse_env(key, *kind, raw, &src)? {
                Some(v) => set_path(&mut table, key, v),
                None => remove_path(&mut table, key),
            }
            prov.set(key, src);
        }

        // The standard OpenTelemetry variables sit between the defaults and the operator's own
        // keys: they fill only `otel` keys neither the file nor an `ATRUND_OTEL_*` variable set.
        // With traces off they are not read at all, so another program's values cannot stop
        // the runner from starting.
        if get_path(&table, "otel.enabled") == Some(&Value::Boolean(true)) {
            for (var, key, kind, value) in otel_env(&env) {
                if prov.get(key) != Source::Default {
                    continue;
                }
                let src = Source::Env(var.to_string());
                if let Some(v) = parse_env(key, kind, &value, &src)? {
                    set_path(&mut table, key, v);
                }
                prov.set(key, src);
            }
        }

        let mut config: Config = match serde_path_to_error::deserialize(Value::Table(table.clone()))
        {
            Ok(c) => c,
            Err(e) => {
                let key = strip_indices(&e.path().to_string());
                let got = get_path(&table, &key)
                    .map(|v| format!(", got {v}"))
                    .unwrap_or_default();
                return Err(ConfigError::BadValue {
                    origin: prov.get(&key),
                    message: match expected_for(&key) {
                        // The enum/visitor messages repeat what we already say.
                        Some(exp)
                            if matches!(
                                key.as_str(),
                                "isolation"
                                    | "policy"
                                    | "otel.sampler"
                                    | "tenants.data_volumes"
                                    | "microvm.vmm"
                                    | "microvm.accel"
                            ) =>
                        {
                            format!("expected {exp}{got}")
                        }
                        Some(exp) => format!("expected {exp}{got} ({})", e.inner().message()),
                        None => format!("{}{got}", e.inner().message()),
                    },
                    key,
                });
            }
        };
        config.sources = prov;
        config.validate()?;
        Ok(config)
    }
}

/// The standard OpenTelemetry variables read, and the `otel` key each sets. `{base}` in
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is the collector's base URL; `/v1/traces` is appended.
pub const OTEL_ENV_VARS: &[(&str, &str)] = &[
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "otel.endpoint"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel.endpoint"),
    ("OTEL_SERVICE_NAME", "otel.service_name"),
    ("OTEL_TRACES_SAMPLER", "otel.sampler"),
    ("OTEL_TRACES_SAMPLER_ARG", "otel.sampler_arg"),
];

/// `(variable, key, kind, value)` for each standard OpenTelemetry variable set (non-empty) in
/// `env`. The traces endpoint is taken as it is; the generic one gets `/v1/traces` appended, and
/// only counts when the traces one is unset (the OTLP exporter specification's rule).
fn otel_env(env: &HashMap<String, String>) -> Vec<(&'static str, &'static str, Kind, String)> {
    let get = |var: &str| env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut out = Vec::new();
    let endpoint = match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(v) => Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", v.to_string())),
        None => get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| {
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("{}/v1/traces", base.trim_end_matches('/')),
            )
        }),
    };
    if let Some((var, v)) = endpoint {
        out.push((var, "otel.endpoint", Kind::Str, v));
    }
    for (var, key, kind) in [
        ("OTEL_SERVICE_NAME", "otel.service_name", Kind::Str),
        ("OTEL_TRACES_SAMPLER", "otel.sampler", Kind::Str),
        ("OTEL_TRACES_SAMPLER_ARG", "otel.sampler_arg", Kind::Float),
    ] {
        if let Some(v) = get(var) {
            out.push((var, key, kind, v.to_string()));
        }
    }
    out
}

/// " (line N)" for a TOML error span.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span.and_then(|s| text.get(..s.start)) {
        Some(before) => format!(" (line {})", before.matches('\n').count() + 1),
        None => String::new(),
    }
}

/// Merges `over` into `base`, refusing unknown keys and values of the wrong type.
fn overlay(
    base: &mut Table,
    over: Table,
    prefix: &str,
    schema: &Schema,
    src: &Source,
    prov: &mut Provenance,
) -> Result<(), ConfigError> {
    for (k, v) in over {
        let path = join(prefix, &k);
        if let Some(kind) = schema.0.get(&path) {
            check_kind(&path, &v, *kind, src)?;
            base.insert(k, v);
            prov.set(&path, src.clone());
        } else if schema.is_section(&path) {
            let Value::Table(sub) = v else {
                return Err(ConfigError::BadValue {
                    key: path.clone(),
                    origin: src.clone(),
                    message: format!(
                        "expected a table ([{path}]) with keys {}",
                        schema.children(&path)
                    ),
                });
            };
            let entry = base.entry(k).or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(base_sub) = entry {
                overlay(base_sub, sub, &path, schema, src, prov)?;
            }
        } else if let Some((old, new)) = moved_key(&path, &v) {
            return Err(ConfigError::Moved {
                key: old.to_string(),
                origin: src.clone(),
                to: new.to_string(),
            });
        } else {
            return Err(ConfigError::UnknownKey {
                known: schema.children(prefix),
                key: path,
                origin: src.clone(),
            });
        }
    }
    Ok(())
}

fn check_kind(key: &str, v: &Value, kind: Kind, src: &Source) -> Result<(), ConfigError> {
    let strings = |a: &Vec<Value>| a.iter().all(Value::is_str);
    let ok = match (kind, v) {
        (Kind::Str, Value::String(_)) => true,
        (Kind::UInt, Value::Integer(i)) => *i >= 0,
        (Kind::Float, Value::Float(_) | Value::Integer(_)) => true,
        (Kind::Bool, Value::Boolean(_)) => true,
        (Kind::StrList | Kind::Policy, Value::Array(a)) => strings(a),
        (Kind::Policy, Value::String(_)) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadValue {
            key: key.to_string(),
            origin: src.clone(),
            message: format!(
                "expected {}, got {v}",
                expected_for(key).unwrap_or(kind.expected())
            ),
        })
    }
}

/// Parses an env value by the key's kind. `None` unsets an optional key (empty value).
fn parse_env(key: &str, kind: Kind, raw: &str, src: &Source) -> Result<Option<Value>, ConfigError> {
    let bad = |extra: &str| ConfigError::BadValue {
        key: key.to_string(),
        origin: src.clone(),
        message: format!("expected {}{extra}, got '{raw}'", kind.expected_env()),
    };
    let list = |s: &str| -> Result<Value, ConfigError> {
        if s.trim().is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        let mut out = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(bad(" without empty entries"));
            }
            out.push(Value::String(item.to_string()));
        }
        Ok(Value::Array(out))
    };
    Ok(Some(match kind {
        Kind::Str if raw.is_empty() && OPTIONAL_KEYS.iter().any(|(k, _)| *k == key) => {
            return Ok(None)
        }
        Kind::Str => Value::String(raw.to_string()),
        Kind::UInt => match raw.trim().parse::<i64>() {
            Ok(i) if i >= 0 => Value::Integer(i),
            _ => return Err(bad("")),
        },
        Kind::Float => match raw.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Value::Float(f),
            _ => return Err(bad("")),
        },
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => Value::Boolean(true),
            "0" | "false" => Value::Boolean(false),
            _ => return Err(bad("")),
        },
        Kind::StrList => list(raw)?,
        Kind::Policy if raw.trim().eq_ignore_ascii_case("open") => Value::String("open".into()),
        Kind::Policy => list(raw)?,
    }))
}

fn set_path(table: &mut Table, key: &str, v: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut t = table;
    for p in parts {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(sub) = entry else { return };
        t = sub;
    }
    t.insert(last.to_string(), v);
}

fn remove_path(table: &mut Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((head, rest)) => {
            if let Some(Value::Table(sub)) = table.get_mut(head) {
                remove_path(sub, rest);
            }
        }
    }
}

fn get_path<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    match key.split_once('.') {
        None => table.get(key),
        Some((head, rest)) => match table.get(head)? {
            Value::Table(sub) => get_path(sub, rest),
            _ => None,
        },
    }
}

/// `policy[2]` → `policy`: errors are reported per key, not per list element.
fn strip_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut depth = 0usize;
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// What a key expects, for keys whose type is richer than their TOML kind.
fn expected_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "listen" => "an address:port such as 127.0.0.1:3000 or [::1]:3000",
        "plc_url" | "identity.handle_resolver" => "an http(s) URL such as https://plc.directory",
        "isolation" => "one of \"none\", \"auto\", \"container\", \"microvm\", \"firecracker\"",
        "policy" => "\"open\" or a list of DIDs and handles",
        "tenants.data_volumes" => "one of \"auto\", \"loop\", \"off\"",
        "microvm.vmm" => "one of \"qemu\", \"firecracker\"",
        "microvm.accel" => "one of \"kvm\", \"tcg\"",
        "otel.sampler" => "one of \"always_on\", \"always_off\", \"traceidratio\", \"parentbased_always_on\", \"parentbased_always_off\", \"parentbased_traceidratio\"",
        _ => return None,
    })
}

/// "; did you mean X?" when a known name is within two edits.
fn suggest<'a>(var: &str, known: impl Iterator<Item = &'a String>) -> String {
    known
        .map(|k| (edit_distance(var, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(strip_indices("policy[2]"), "policy");
        assert_eq!(strip_indices("permissions.run[0]"), "permissions.run");
        assert_eq!(strip_indices("]]a[[b"), "a");
        assert_eq!(edit_distance("ATRUND_LISTN", "ATRUND_LISTEN"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            suggest("ATRUND_ZZZZZZZZ", ["ATRUND_LISTEN".to_string()].iter()),
            ""
        );
        assert!(is_exempt("ATRUND_TEST_ANYTHING") && is_exempt("ATRUND_LOG"));
        assert!(!is_exempt("ATRUND_LOGS") && !is_exempt("ATRUND_TES"));
        let mut t = Table::new();
        set_path(&mut t, "a.b.c", Value::Integer(1));
        assert_eq!(get_path(&t, "a.b.c"), Some(&Value::Integer(1)));
        remove_path(&mut t, "a.b.c");
        assert_eq!(get_path(&t, "a.b.c"), None);
        assert_eq!(line_of("a\nb\nc", Some(4..5)), " (line 3)");
        assert_eq!(line_of("a", Some(9..10)), "");
    }
}
