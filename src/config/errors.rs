//! Configuration errors: `ConfigError` (a message with the path of the key it is about),
//! `ConfigErrors`, and the conversion of figment's deserialization errors into them.
//!
//! A leaf of `config/`: loading, validation and recipes all report through it, so it must
//! use nothing else from `config/`.

use std::fmt;

use figment::error::Kind;

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
    error
        .into_iter()
        .map(|e| {
            let mut parts = e.path.clone();
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
            let mut path = prefix.to_owned();
            for part in &parts {
                if part.parse::<usize>().is_ok() {
                    path.push_str(&format!("[{part}]"));
                } else {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(part);
                }
            }
            ConfigError {
                path,
                message: kind_message(&e.kind),
            }
        })
        .collect()
}

/// The message for one figment error. Unknown keys and `type` values list what is
/// known in the configuration's own words; figment's text nests backticks there.
fn kind_message(kind: &Kind) -> String {
    let known = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match kind {
        Kind::UnknownField(field, expected) => {
            format!("unknown key {field:?}; known: {}", known(expected))
        }
        Kind::UnknownVariant(variant, expected) => {
            format!("unknown type {variant:?}; known: {}", known(expected))
        }
        Kind::MissingField(_) => "is required".to_owned(),
        other => other.to_string(),
    }
}
