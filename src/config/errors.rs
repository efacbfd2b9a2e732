//! Configuration errors: `ConfigError` (a message with the path of the key it is about),
//! `ConfigErrors`, and the conversion of figment's deserialization errors into them,
//! which never quotes the value of a secret key.
//!
//! A leaf of `config/`: loading, validation and recipes all report through it, so it must
//! use nothing else from `config/`.

use std::fmt;

use figment::error::{Actual, Kind};
use figment::value::Value;

/// Keys whose value is a secret (or, for `headers`, may be one): an error about them
/// never quotes the value written there, whatever its type.
const SECRET_KEYS: &[&str] = &[
    "control_token",
    "token",
    "bearer",
    "password",
    "webhook_url",
    "routing_key",
    "api_key",
    "secret",
    "headers",
];

/// One configuration error with the path of the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `rule[2].for`; list indexes count from 0.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in a configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Turns figment's errors into ours, prefixing each path with `prefix`.
pub(super) fn figment_errors(prefix: &str, error: figment::Error) -> Vec<ConfigError> {
    figment_errors_in(prefix, error, None)
}

/// [`figment_errors`] for the deserialization of `item`. serde loses the path inside a
/// `type`-tagged item (a signal, a step): an error about a value is then put at the one
/// key of `item` that holds that value, when there is exactly one.
pub(super) fn figment_errors_in(
    prefix: &str,
    error: figment::Error,
    item: Option<&Value>,
) -> Vec<ConfigError> {
    error
        .into_iter()
        .map(|e| {
            let mut parts = e.path.clone();
            if parts.is_empty()
                && let (Some(item), Some(actual)) = (item, found(&e.kind))
                && let [only] = holding(item, actual).as_slice()
            {
                parts = only.clone();
            }
            // The path of an unknown or missing key ends at the table that holds it (and
            // serde loses even the unknown key inside a `type`-tagged item such as a
            // signal): put the key back so that the path names it.
            let key = match &e.kind {
                Kind::UnknownField(field, _) => Some(field.as_str()),
                Kind::MissingField(field) => Some(field.as_ref()),
                _ => None,
            };
            if let Some(key) = key
                && parts.last().map(String::as_str) != Some(key)
            {
                parts.push(key.to_owned());
            }
            // A value is quoted only where it is known not to be a secret: at a key
            // found, outside every secret key.
            let may_quote =
                !parts.is_empty() && !parts.iter().any(|p| SECRET_KEYS.contains(&p.as_str()));
            ConfigError {
                path: join_path(prefix, &parts),
                message: kind_message(&e.kind, may_quote),
            }
        })
        .collect()
}

fn join_path(prefix: &str, parts: &[String]) -> String {
    let mut path = prefix.to_owned();
    for part in parts {
        if part.parse::<usize>().is_ok() {
            path.push_str(&format!("[{part}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
        }
    }
    path
}

/// The value an error is about, when it names one.
fn found(kind: &Kind) -> Option<&Actual> {
    match kind {
        Kind::InvalidType(actual, _) | Kind::InvalidValue(actual, _) => Some(actual),
        _ => None,
    }
}

/// The paths of the values in `value` equal to `actual`.
fn holding(value: &Value, actual: &Actual) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![(Vec::new(), value)];
    while let Some((path, v)) = pending.pop() {
        match v {
            Value::Dict(_, dict) => pending.extend(dict.iter().map(|(k, v)| {
                let mut p = path.clone();
                p.push(k.clone());
                (p, v)
            })),
            Value::Array(_, items) => pending.extend(items.iter().enumerate().map(|(i, v)| {
                let mut p = path.clone();
                p.push(i.to_string());
                (p, v)
            })),
            leaf if same(leaf, actual) => found.push(path),
            _ => {}
        }
    }
    found
}

fn same(leaf: &Value, actual: &Actual) -> bool {
    match actual {
        Actual::Str(a) => leaf.as_str() == Some(a.as_str()),
        Actual::Bool(a) => leaf.to_bool() == Some(*a),
        Actual::Unsigned(a) => leaf.to_u128() == Some(*a),
        Actual::Signed(a) => leaf.to_i128() == Some(*a),
        Actual::Float(a) => leaf.to_f64() == Some(*a),
        Actual::Char(a) => leaf.to_char() == Some(*a),
        _ => false,
    }
}

/// What an error says of a value it must not quote: its type only.
fn kind_of(actual: &Actual) -> String {
    match actual {
        Actual::Str(_) => "a string".to_owned(),
        Actual::Bool(_) => "a boolean".to_owned(),
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer".to_owned(),
        Actual::Float(_) => "a number".to_owned(),
        Actual::Char(_) => "a character".to_owned(),
        Actual::Bytes(_) => "bytes".to_owned(),
        Actual::Other(_) => "a value".to_owned(),
        other => other.to_string(),
    }
}

/// The message for one figment error. Unknown keys and `type` values list what is
/// known in the configuration's own words; figment's text nests backticks there. The
/// value an error is about is quoted only when `may_quote`.
fn kind_message(kind: &Kind, may_quote: bool) -> String {
    let known = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let message = match kind {
        Kind::UnknownField(field, expected) => {
            format!("unknown key {field:?}; known: {}", known(expected))
        }
        Kind::UnknownVariant(variant, expected) => {
            format!("unknown type {variant:?}; known: {}", known(expected))
        }
        Kind::MissingField(_) => "is required".to_owned(),
        Kind::InvalidType(actual, expected) if !may_quote => {
            format!(
                "invalid type: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        Kind::InvalidValue(actual, expected) if !may_quote => {
            format!(
                "invalid value: found {}, expected {expected}",
                kind_of(actual)
            )
        }
        other => other.to_string(),
    };
    message.replace(
        "struct RawSecret",
        "a secret: a table like { file = \"...\" } or { env = \"...\" }",
    )
}
