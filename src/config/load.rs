//! Reading a configuration file (TOML, or YAML by extension) and applying `REARGUARD_`
//! environment overrides before validation.
//!
//! Overrides name a key path with `__` between parts and list indexes as numbers:
//! `REARGUARD_DAEMON__MODE=shadow`, `REARGUARD_RULE__0__FOR=2m`. Variables without `__`
//! (such as secrets a configuration refers to) are not overrides and are ignored here.

use std::path::Path;

use figment::Figment;
use figment::providers::{Format as _, Toml, Yaml};
use figment::value::{Dict, Tag, Value};

use super::Config;
use super::errors::{ConfigError, ConfigErrors, figment_errors};
use super::raw::RawConfig;

/// The syntax of a configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    /// YAML for `.yaml` and `.yml`, TOML otherwise.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::Toml,
        }
    }
}

/// Loads, overrides from the process environment, and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read configuration file {}: {e}", path.display()),
        }])
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    load_str(&text, Format::from_path(path), std::env::vars(), base_dir)
}

/// Loads a configuration from text, with the given environment for overrides and for
/// secrets read from environment variables. Relative
/// paths in the configuration (secret files) are resolved against `base_dir`.
pub fn load_str(
    text: &str,
    format: Format,
    env: impl IntoIterator<Item = (String, String)>,
    base_dir: &Path,
) -> Result<Config, ConfigErrors> {
    let figment = match format {
        Format::Toml => Figment::from(Toml::string(text)),
        Format::Yaml => Figment::from(Yaml::string(text)),
    };
    let mut root: Value = figment
        .extract::<Value>()
        .map_err(|e| ConfigErrors(figment_errors("", e)))?;
    if matches!(root, Value::Empty(..)) {
        root = Value::Dict(Tag::Default, Dict::new());
    }
    let mut errors = Vec::new();
    let env: std::collections::BTreeMap<String, String> = env.into_iter().collect();
    let overrides = env
        .iter()
        .filter(|(k, _)| k.starts_with("REARGUARD_") && k.contains("__"));
    for (key, value) in overrides {
        if let Err(message) = apply_override(&mut root, key, value) {
            errors.push(ConfigError {
                path: key.clone(),
                message,
            });
        }
    }
    let raw: RawConfig = match root.deserialize() {
        Ok(raw) => raw,
        Err(e) => {
            errors.extend(figment_errors("", e));
            return Err(ConfigErrors(errors));
        }
    };
    // Secrets named by `env = "..."` come from the same environment as the overrides.
    let env_lookup = |name: &str| env.get(name).cloned();
    match super::validate::validate(raw, base_dir, &env_lookup) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

/// Sets the key named by `REARGUARD_A__B__0__C` in `root`, creating tables as needed.
fn apply_override(root: &mut Value, var: &str, text: &str) -> Result<(), String> {
    let parts: Vec<String> = var["REARGUARD_".len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("environment override has an empty key part".to_owned());
    }
    let new_value: Value = text.parse().unwrap_or_else(|_| Value::from(text));
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        node = match node {
            Value::Dict(_, dict) => {
                if last {
                    dict.insert(part.clone(), new_value);
                    return Ok(());
                }
                dict.entry(part.clone())
                    .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()))
            }
            Value::Array(_, items) => {
                let index: usize = part
                    .parse()
                    .map_err(|_| format!("expected a list index, got {part:?}"))?;
                let len = items.len();
                let slot = items
                    .get_mut(index)
                    .ok_or_else(|| format!("list index {index} is past the end (length {len})"))?;
                if last {
                    *slot = new_value;
                    return Ok(());
                }
                slot
            }
            _ => {
                return Err(format!(
                    "cannot set {part:?} inside a value that is not a table"
                ));
            }
        };
    }
    Ok(())
}
