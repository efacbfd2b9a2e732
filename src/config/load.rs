//! Reading a configuration file (TOML, or YAML by extension) and applying `REARGUARD_`
//! environment overrides before validation.
//!
//! Overrides name a key path with `__` between parts and list indexes as numbers:
//! `REARGUARD_DAEMON__MODE=shadow`, `REARGUARD_RULE__0__FOR=2m`. Variables without `__`
//! (such as secrets a configuration refers to) are not overrides and are ignored here.
//!
//! Whatever the text, loading ends in a configuration or in errors, never in a panic, a
//! stack overflow or a silent choice: values nest at most [`MAX_DEPTH`] levels, no string
//! holds a NUL byte (no argv, environment value or path can carry one), and a YAML key
//! written twice in one mapping is an error, as TOML makes it. A parse error never
//! quotes the text it is about, which may hold a secret.

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
    let mut root = parse(text, format)?;
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
    check_values(&root, "", 0, &mut errors);
    if errors.iter().any(|e| e.message.starts_with(TOO_DEEP)) {
        return Err(ConfigErrors(errors));
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

/// The deepest nesting of tables and lists accepted in a value; the deepest key of the
/// schema is far shallower, and a deeper value is an attack on the parser's stack.
pub const MAX_DEPTH: usize = 32;

const TOO_DEEP: &str = "nests tables or lists deeper than";

/// The text as a tree of values, or its syntax errors (with the line, never the text).
fn parse(text: &str, format: Format) -> Result<Value, ConfigErrors> {
    let syntax = |message: String| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message,
        }])
    };
    let figment = match format {
        Format::Toml => Figment::from(Toml::string(text)),
        Format::Yaml => {
            // Figment keeps the last of two equal keys; a mapping that says two things
            // about one key is refused instead.
            if let Err(e) = Yaml::from_str::<unique::Unique>(text) {
                return Err(syntax(without_source(&e.to_string())));
            }
            Figment::from(Yaml::string(text))
        }
    };
    let mut root: Value = figment.extract::<Value>().map_err(|e| {
        let mut errors = figment_errors("", e);
        for e in &mut errors {
            e.message = without_source(&e.message);
        }
        ConfigErrors(errors)
    })?;
    if matches!(root, Value::Empty(..)) {
        root = Value::Dict(Tag::Default, Dict::new());
    }
    Ok(root)
}

/// A parser's message without the lines of the source it quotes (the TOML parser shows
/// the line with a caret under it): the line and column say where, and the line itself
/// may hold a secret.
fn without_source(message: &str) -> String {
    let quotes_source = |line: &str| {
        let t = line
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit());
        t.trim_start().starts_with('|')
    };
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !quotes_source(l))
        .collect::<Vec<_>>()
        .join(": ")
}

/// Reports values nested deeper than [`MAX_DEPTH`] and strings (or keys) holding a NUL
/// byte, each at its path.
fn check_values(value: &Value, path: &str, depth: usize, errors: &mut Vec<ConfigError>) {
    let err = |errors: &mut Vec<ConfigError>, path: String, message: String| {
        errors.push(ConfigError { path, message })
    };
    match value {
        Value::Dict(..) | Value::Array(..) if depth >= MAX_DEPTH => {
            err(
                errors,
                path.to_owned(),
                format!("{TOO_DEEP} {MAX_DEPTH} levels"),
            );
        }
        Value::Dict(_, dict) => {
            for (key, v) in dict {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if key.contains('\0') {
                    err(errors, p.clone(), "the key holds a NUL byte".to_owned());
                }
                check_values(v, &p, depth + 1, errors);
            }
        }
        Value::Array(_, items) => {
            for (i, v) in items.iter().enumerate() {
                check_values(v, &format!("{path}[{i}]"), depth + 1, errors);
            }
        }
        Value::String(_, s) if s.contains('\0') => {
            err(
                errors,
                path.to_owned(),
                "holds a NUL byte, which no argument, environment value or path can carry"
                    .to_owned(),
            );
        }
        _ => {}
    }
}

/// How deep `text` nests lists and tables as figment's value parser reads an override
/// (strings in double quotes with backslash escapes, characters in single quotes), so
/// that a deep one is refused before that recursive parser sees it.
fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    deepest
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
    if nesting(text) > MAX_DEPTH {
        return Err(format!("the value {TOO_DEEP} {MAX_DEPTH} levels"));
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

/// A YAML document walked only to find a key written twice in one mapping.
mod unique {
    use std::collections::HashSet;
    use std::fmt;

    use serde::de::{
        self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
    };

    /// Any YAML value whose mappings have no key twice.
    pub(super) struct Unique;

    /// A mapping's key as text; `None` for a key that is itself a list or mapping.
    struct Key(Option<String>);

    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Walk { key: false }).map(|_| Unique)
        }
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Walk { key: true }).map(Key)
        }
    }

    /// Visits any value; for a key, returns a scalar's text.
    struct Walk {
        key: bool,
    }

    impl Walk {
        fn text<E>(&self, text: impl fmt::Display) -> Result<Option<String>, E> {
            Ok(self.key.then(|| text.to_string()))
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any value")
        }

        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            self.text(v)
        }

        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            self.text(v)
        }

        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            self.text(v)
        }

        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            self.text(v)
        }

        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            self.text(v)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            self.text("null")
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            self.text("null")
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            while let Some(Key(key)) = map.next_key::<Key>()? {
                if let Some(key) = key
                    && !seen.insert(key.clone())
                {
                    return Err(de::Error::custom(format!(
                        "the key {key:?} is written twice in one mapping; write it once"
                    )));
                }
                map.next_value::<Unique>()?;
            }
            Ok(None)
        }

        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
            let (Unique, variant) = data.variant::<Unique>()?;
            variant.newtype_variant::<Unique>()?;
            Ok(None)
        }
    }
}
