//! The validation context every section shares: the errors collected so far (each with
//! its path), the directory relative paths are resolved against, the environment secrets
//! are read from, and the checks of values that several sections use (durations, URLs,
//! HTTP methods and statuses, argv and templates, secrets, Kubernetes names, unique
//! names). It knows no section: what a section's keys mean is decided in the section's
//! own file, never here.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use figment::value::Value;
use secrecy::SecretString;
use serde::de::DeserializeOwned;

use super::placeholders::{PLACEHOLDERS, placeholders_in, unknown_placeholder};
use crate::config::errors::{ConfigError, ConfigErrors, figment_errors};
use crate::config::raw::RawSecret;
use crate::config::units::parse_duration;

/// What every section's checks share while one configuration is validated.
pub(super) struct Ctx<'a> {
    pub(super) errors: Vec<ConfigError>,
    pub(super) base_dir: &'a Path,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(base_dir: &'a Path, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Ctx {
            errors: Vec::new(),
            base_dir,
            env,
        }
    }

    /// `value` when no error was recorded, otherwise every error in the order found.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }

    pub(super) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Deserializes one list item, recording its errors under `path`.
    pub(super) fn item<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Option<T> {
        match value.deserialize::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.extend(figment_errors(path, e));
                None
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        path: String,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }

    pub(super) fn positive_duration(
        &mut self,
        path: String,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path.clone(), value, default);
        if d.is_zero() {
            self.err(path, "must be greater than zero");
            return default;
        }
        d
    }

    pub(super) fn url(&mut self, path: String, text: &str) -> Option<reqwest::Url> {
        match reqwest::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            Ok(_) => {
                self.err(path, format!("expected an http or https URL, got {text:?}"));
                None
            }
            Err(e) => {
                self.err(path, format!("expected a URL, got {text:?}: {e}"));
                None
            }
        }
    }

    pub(super) fn method(
        &mut self,
        path: String,
        text: &Option<String>,
        default: reqwest::Method,
    ) -> reqwest::Method {
        match text {
            None => default,
            Some(m) => match reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => {
                    self.err(
                        path,
                        format!("expected an HTTP method like \"POST\", got {m:?}"),
                    );
                    default
                }
            },
        }
    }

    pub(super) fn statuses(
        &mut self,
        path: String,
        v: &Option<Vec<u16>>,
        default: &[u16],
    ) -> Vec<u16> {
        match v {
            None => default.to_vec(),
            Some(list) if list.is_empty() => {
                self.err(path, "must list at least one status code");
                default.to_vec()
            }
            Some(list) => {
                for s in list {
                    if !(100..=599).contains(s) {
                        self.err(path.clone(), format!("{s} is not an HTTP status code"));
                    }
                }
                list.clone()
            }
        }
    }

    pub(super) fn argv(&mut self, path: &str, command: &[String], templated: bool) -> Vec<String> {
        if command.is_empty() {
            self.err(path, "must name a program: a list like [\"/usr/bin/true\"]");
        }
        for (i, arg) in command.iter().enumerate() {
            let found = placeholders_in(arg);
            if found.is_empty() {
                continue;
            }
            if !templated {
                self.err(
                    format!("{path}[{i}]"),
                    "placeholders are not available here",
                );
                continue;
            }
            for name in &found {
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    self.err(format!("{path}[{i}]"), unknown_placeholder(name));
                }
            }
            if !(found.len() == 1 && *arg == format!("{{{}}}", found[0])) {
                let name = &found[0];
                self.err(
                    format!("{path}[{i}]"),
                    format!(
                        "placeholders are substituted only as whole arguments: write \"{{{name}}}\" as an argument of its own, or read the environment variable REARGUARD_{}",
                        name.to_ascii_uppercase()
                    ),
                );
            }
        }
        command.to_vec()
    }

    pub(super) fn template(&mut self, path: String, text: &str) {
        for name in placeholders_in(text) {
            if !PLACEHOLDERS.contains(&name.as_str()) {
                self.err(path.clone(), unknown_placeholder(&name));
            }
        }
    }

    pub(super) fn secret(&mut self, path: String, raw: &RawSecret) -> Option<SecretString> {
        let prefix = raw.prefix.clone().unwrap_or_default();
        let value = match (&raw.file, &raw.env) {
            (Some(file), None) => {
                let p = self.base_dir.join(file);
                match std::fs::read_to_string(&p) {
                    Ok(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
                    Err(e) => {
                        self.err(
                            path,
                            format!("cannot read secret file {}: {e}", p.display()),
                        );
                        return None;
                    }
                }
            }
            (None, Some(var)) => match (self.env)(var) {
                Some(v) => v,
                None => {
                    self.err(path, format!("environment variable {var} is not set"));
                    return None;
                }
            },
            _ => {
                self.err(path, "a secret takes exactly one of `file` or `env`");
                return None;
            }
        };
        Some(SecretString::from(format!("{prefix}{value}")))
    }
}

/// Deserializes each item of a list section (`section[i]`); `None` where an item has
/// errors, so that positions stay those of the file.
pub(super) fn items<T: DeserializeOwned>(
    ctx: &mut Ctx,
    section: &str,
    values: &[Value],
) -> Vec<Option<T>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| ctx.item(&format!("{section}[{i}]"), v))
        .collect()
}

/// What `check` makes of each item without errors, given its position in the file, in
/// file order; an item for which `check` returns `None` is left out.
pub(super) fn each_item<T, U>(
    raws: &[Option<T>],
    mut check: impl FnMut(usize, &T) -> Option<U>,
) -> Vec<U> {
    raws.iter()
        .enumerate()
        .filter_map(|(i, raw)| check(i, raw.as_ref()?))
        .collect()
}

/// Each name's first position, for lookups that stay linear in the size of the file
/// (100,000 rules resolve in well under a second).
pub(super) fn index_of<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        index.entry(name).or_insert(i);
    }
    index
}

/// Reports empty names, and names an earlier item of the section already has.
pub(super) fn check_unique<'a>(
    ctx: &mut Ctx,
    section: &str,
    names: impl Iterator<Item = (usize, &'a str)>,
) {
    let mut seen = HashSet::new();
    for (i, name) in names {
        if name.is_empty() {
            ctx.err(format!("{section}[{i}].name"), "must not be empty");
        } else if !seen.insert(name) {
            ctx.err(
                format!("{section}[{i}].name"),
                format!("{name:?} is used by an earlier {section}"),
            );
        }
    }
}

/// A namespace or object name: a DNS-1123 label or subdomain, as the API requires.
pub(super) fn kube_name(ctx: &mut Ctx, path: String, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        ctx.err(
            path,
            format!("{name:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"),
        );
    }
}
