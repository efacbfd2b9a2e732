//! Rollback recipes: documented, ready plans for common systems, shipped inside the
//! binary, that a configuration uses by name with a few typed parameters:
//!
//! ```toml
//! [[plan.step]]
//! type = "recipe"
//! recipe = "sqlite-restore"
//! with = { database = "/var/lib/app/app.db", backup = "/var/backups/app/app.db" }
//! ```
//!
//! A recipe step is expanded here, at validation time, into ordinary plan steps (exec,
//! release switch, http), so the engine, replay and reports never see a recipe. This module
//! owns the recipe file format (`config/recipes/NAME.md`: Markdown around one TOML block), parameter checking (unknown,
//! missing and ill-typed parameters are `check` errors with their path) and substitution.
//! It does no I/O: it checks no file and runs no command.
//!
//! In a recipe's steps `${name}` is a parameter, replaced here; `{to_revision}` and the
//! other placeholders pass through to the action, which fills them at run time. A string
//! that is exactly `${list}` inside an array is replaced by the list's items; an array item
//! `{ if = "param", then = [...] }` (or `unless`) is kept only when the parameter is set
//! and not false; a step with `if`/`unless` likewise. A parameter that is unset removes
//! the array item or table key that is exactly `${param}`.

use std::collections::BTreeMap;

use figment::Figment;
use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Tag, Value};
use serde::Deserialize;

use super::errors::{ConfigError, figment_errors};
use super::units::parse_duration;

/// Where the scripts that recipes call are installed by the Debian package.
pub const DEFAULT_SCRIPTS_DIR: &str = "/usr/lib/rearguard/recipes";

/// The recipe files, by name, embedded so that `check` works anywhere.
pub const FILES: [(&str, &str); 16] = [
    (
        "kubernetes-undo",
        include_str!("../../config/recipes/kubernetes-undo.md"),
    ),
    (
        "kubernetes-config",
        include_str!("../../config/recipes/kubernetes-config.md"),
    ),
    (
        "kubernetes-emergency",
        include_str!("../../config/recipes/kubernetes-emergency.md"),
    ),
    (
        "kubernetes-database",
        include_str!("../../config/recipes/kubernetes-database.md"),
    ),
    (
        "systemd-release",
        include_str!("../../config/recipes/systemd-release.md"),
    ),
    (
        "postgres-restore",
        include_str!("../../config/recipes/postgres-restore.md"),
    ),
    (
        "sqlite-restore",
        include_str!("../../config/recipes/sqlite-restore.md"),
    ),
    (
        "migration-downgrade",
        include_str!("../../config/recipes/migration-downgrade.md"),
    ),
    (
        "alembic-downgrade",
        include_str!("../../config/recipes/alembic-downgrade.md"),
    ),
    (
        "redis-flush",
        include_str!("../../config/recipes/redis-flush.md"),
    ),
    (
        "docker-compose",
        include_str!("../../config/recipes/docker-compose.md"),
    ),
    ("pm2", include_str!("../../config/recipes/pm2.md")),
    ("heroku", include_str!("../../config/recipes/heroku.md")),
    ("aws-ecs", include_str!("../../config/recipes/aws-ecs.md")),
    (
        "azure-app-service",
        include_str!("../../config/recipes/azure-app-service.md"),
    ),
    (
        "terraform",
        include_str!("../../config/recipes/terraform.md"),
    ),
];

/// A recipe file, parsed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// One line: what the recipe does.
    pub summary: String,
    /// Whether CI runs it for real, or checks only its exact commands, and against what.
    pub tested: String,
    pub preconditions: Vec<String>,
    pub verifies: Vec<String>,
    pub cannot_undo: Vec<String>,
    #[serde(default)]
    pub param: BTreeMap<String, Param>,
    /// Groups of parameters of which exactly one must be set.
    #[serde(default)]
    pub exactly_one: Vec<Vec<String>>,
    pub step: Vec<Value>,
}

/// A recipe's parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    #[serde(rename = "type")]
    pub kind: ParamType,
    pub doc: String,
    #[serde(default)]
    pub required: bool,
    pub default: Option<Value>,
    /// For `choice`: the accepted values.
    pub choices: Option<Vec<String>>,
    /// For `integer`: the smallest value accepted (default 0: never negative).
    pub min: Option<i64>,
}

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Any text that does not start with `-` (so that it is never read as an option).
    String,
    /// A name: letters, digits and `_ . @ : + -`, not starting with `-`.
    Name,
    /// An absolute path.
    Path,
    /// A list of texts, none starting with `-`.
    List,
    /// A command: a non-empty list whose first item names the program.
    Argv,
    Integer,
    Bool,
    /// A duration like `"5m"`.
    Duration,
    /// One of `choices`.
    Choice,
}

impl ParamType {
    fn describe(self) -> &'static str {
        match self {
            ParamType::String => "a text not starting with \"-\"",
            ParamType::Name => "a name (letters, digits, _ . @ : + -) not starting with \"-\"",
            ParamType::Path => "an absolute path",
            ParamType::List => "a list of texts, none starting with \"-\"",
            ParamType::Argv => "a command as a list like [\"/usr/bin/tool\", \"arg\"]",
            ParamType::Integer => "an integer",
            ParamType::Bool => "true or false",
            ParamType::Duration => "a duration like \"5m\"",
            ParamType::Choice => "one of the listed choices",
        }
    }
}

/// A parameter's value once checked.
#[derive(Debug, Clone, PartialEq)]
enum Bound {
    Unset,
    Text(String),
    List(Vec<String>),
    Bool(bool),
}

impl Bound {
    fn truthy(&self) -> bool {
        match self {
            Bound::Unset => false,
            Bound::Text(_) => true,
            Bound::List(l) => !l.is_empty(),
            Bound::Bool(b) => *b,
        }
    }
}

/// A plan step after expansion: the path its errors are reported under, the name it gets
/// when it has none, and its value, which deserializes as an ordinary step.
#[derive(Debug)]
pub struct ExpandedStep {
    pub path: String,
    pub default_name: String,
    pub value: Value,
}

/// The recipe step of a plan, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipeStep {
    #[serde(rename = "type")]
    _type: String,
    recipe: String,
    name: Option<String>,
    #[serde(default)]
    with: BTreeMap<String, Value>,
    scripts_dir: Option<String>,
}

/// The names of every shipped recipe.
pub fn names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(n, _)| *n)
}

/// The text of recipe `name`: its documentation and steps.
pub fn text(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Parses recipe `name`.
pub fn get(name: &str) -> Option<Result<Recipe, String>> {
    text(name).map(parse)
}

/// Parses a recipe file: Markdown whose one ```` ```toml ```` block is the definition.
pub fn parse(text: &str) -> Result<Recipe, String> {
    let start = text
        .find("\n```toml\n")
        .ok_or("the recipe has no ```toml block")?
        + "\n```toml\n".len();
    let len = text[start..]
        .find("\n```\n")
        .ok_or("the recipe's ```toml block is not closed")?;
    Figment::from(Toml::string(&text[start..=start + len]))
        .extract::<Recipe>()
        .map_err(|e| e.to_string())
}

/// Expands the recipe steps among a plan's steps (`plan` is the plan's path, e.g.
/// `plan[0]`); other steps pass through unchanged. Errors go to `errors`; a recipe step
/// with errors expands to nothing.
pub fn expand_steps(
    plan: &str,
    steps: &[Value],
    errors: &mut Vec<ConfigError>,
) -> Vec<ExpandedStep> {
    let mut out = Vec::new();
    for (j, value) in steps.iter().enumerate() {
        let sp = format!("{plan}.step[{j}]");
        if !is_recipe_step(value) {
            out.push(ExpandedStep {
                path: sp,
                default_name: format!("step {}", j + 1),
                value: value.clone(),
            });
            continue;
        }
        match value.deserialize::<RawRecipeStep>() {
            Ok(raw) => out.extend(expand(&sp, &raw, errors)),
            Err(e) => errors.extend(figment_errors(&sp, e)),
        }
    }
    out
}

fn is_recipe_step(value: &Value) -> bool {
    value
        .as_dict()
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        == Some("recipe")
}

fn err(errors: &mut Vec<ConfigError>, path: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError {
        path: path.into(),
        message: message.into(),
    });
}

fn expand(sp: &str, raw: &RawRecipeStep, errors: &mut Vec<ConfigError>) -> Vec<ExpandedStep> {
    let recipe = match get(&raw.recipe) {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            err(
                errors,
                format!("{sp}.recipe"),
                format!("the shipped recipe {:?} is broken: {e}", raw.recipe),
            );
            return Vec::new();
        }
        None => {
            err(
                errors,
                format!("{sp}.recipe"),
                format!(
                    "no recipe is named {:?}; known: {}",
                    raw.recipe,
                    names().collect::<Vec<_>>().join(", ")
                ),
            );
            return Vec::new();
        }
    };
    let before = errors.len();
    let mut bound: BTreeMap<String, Bound> = BTreeMap::new();
    for key in raw.with.keys() {
        if !recipe.param.contains_key(key) {
            err(
                errors,
                format!("{sp}.with.{key}"),
                format!(
                    "recipe {:?} has no parameter {key:?}; its parameters: {}",
                    raw.recipe,
                    recipe.param.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    for (name, param) in &recipe.param {
        let path = format!("{sp}.with.{name}");
        let value = raw.with.get(name).or(param.default.as_ref());
        let b = match value {
            None if param.required => {
                err(
                    errors,
                    path,
                    format!("is required by recipe {:?}: {}", raw.recipe, param.doc),
                );
                Bound::Unset
            }
            None => Bound::Unset,
            Some(v) => match check_value(param, v) {
                Ok(b) => b,
                Err(m) => {
                    err(errors, path, m);
                    Bound::Unset
                }
            },
        };
        bound.insert(name.clone(), b);
    }
    for group in &recipe.exactly_one {
        let set: Vec<&String> = group
            .iter()
            .filter(|n| bound.get(*n).is_some_and(Bound::truthy))
            .collect();
        if set.len() != 1 {
            err(
                errors,
                format!("{sp}.with"),
                format!(
                    "recipe {:?} takes exactly one of {}; {} set",
                    raw.recipe,
                    group.join(", "),
                    if set.is_empty() {
                        "none is".to_owned()
                    } else {
                        format!(
                            "{} are",
                            set.iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(" and ")
                        )
                    }
                ),
            );
        }
    }
    let scripts_dir = raw.scripts_dir.as_deref().unwrap_or(DEFAULT_SCRIPTS_DIR);
    if !scripts_dir.starts_with('/') {
        err(
            errors,
            format!("{sp}.scripts_dir"),
            format!("expected an absolute path, got {scripts_dir:?}"),
        );
    }
    bound.insert(
        "scripts_dir".to_owned(),
        Bound::Text(scripts_dir.trim_end_matches('/').to_owned()),
    );
    if errors.len() > before {
        return Vec::new();
    }

    let prefix = raw.name.clone().unwrap_or_else(|| raw.recipe.clone());
    let mut out = Vec::new();
    for (k, template) in recipe.step.iter().enumerate() {
        let path = format!("{sp}.expanded[{k}]");
        let Some(dict) = template.as_dict() else {
            err(
                errors,
                path,
                "recipe step is not a table (a bug in the recipe)",
            );
            continue;
        };
        match condition(dict, &bound) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(m) => {
                err(errors, path, m);
                continue;
            }
        }
        let mut dict = dict.clone();
        dict.remove("if");
        dict.remove("unless");
        let step_name = dict
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("step {}", k + 1), str::to_owned);
        match substitute(&Value::Dict(Tag::Default, dict), &bound) {
            Ok(Some(Value::Dict(tag, mut d))) => {
                let full = format!("{prefix}: {step_name}");
                d.insert("name".to_owned(), Value::from(full.clone()));
                out.push(ExpandedStep {
                    path,
                    default_name: full,
                    value: Value::Dict(tag, d),
                });
            }
            Ok(_) => err(errors, path, "recipe step vanished (a bug in the recipe)"),
            Err(m) => err(errors, path, m),
        }
    }
    out
}

/// Checks a parameter's value against its type.
fn check_value(param: &Param, v: &Value) -> Result<Bound, String> {
    let wrong = || format!("expected {}", param.kind.describe());
    let text = || -> Option<String> {
        match v {
            Value::String(_, s) => Some(s.clone()),
            Value::Num(_, n) => n.to_i128().map(|i| i.to_string()),
            _ => None,
        }
    };
    let no_dash = |s: &str| -> Result<(), String> {
        if s.is_empty() {
            Err("must not be empty".to_owned())
        } else if s.starts_with('-') {
            Err(format!(
                "{s:?} starts with \"-\", so a program would read it as an option"
            ))
        } else if s.contains('\0') {
            Err("must not contain a NUL character".to_owned())
        } else {
            Ok(())
        }
    };
    match param.kind {
        ParamType::String => {
            let s = text().ok_or_else(wrong)?;
            no_dash(&s)?;
            Ok(Bound::Text(s))
        }
        ParamType::Name => {
            let s = text().ok_or_else(wrong)?;
            no_dash(&s)?;
            if !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.@:+-".contains(c))
            {
                return Err(format!("{s:?} is not {}", param.kind.describe()));
            }
            Ok(Bound::Text(s))
        }
        ParamType::Path => {
            let s = text().ok_or_else(wrong)?;
            no_dash(&s)?;
            if !s.starts_with('/') {
                return Err(format!("expected an absolute path, got {s:?}"));
            }
            Ok(Bound::Text(s))
        }
        ParamType::List | ParamType::Argv => {
            let Value::Array(_, items) = v else {
                return Err(wrong());
            };
            let mut list = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Some(s) = item.as_str() else {
                    return Err(format!("item {i}: {}", wrong()));
                };
                if param.kind == ParamType::List || i == 0 {
                    no_dash(s).map_err(|m| format!("item {i}: {m}"))?;
                }
                list.push(s.to_owned());
            }
            if param.kind == ParamType::Argv && list.is_empty() {
                return Err(format!("must name a program: {}", wrong()));
            }
            Ok(Bound::List(list))
        }
        ParamType::Integer => {
            let n = match v {
                Value::Num(_, n) => n.to_i128().ok_or_else(wrong)?,
                Value::String(_, s) => s.parse::<i128>().map_err(|_| wrong())?,
                _ => return Err(wrong()),
            };
            let min = param.min.unwrap_or(0);
            if n < i128::from(min) {
                return Err(format!("must be at least {min}, got {n}"));
            }
            Ok(Bound::Text(n.to_string()))
        }
        ParamType::Bool => v.to_bool().map(Bound::Bool).ok_or_else(wrong),
        ParamType::Duration => {
            let s = v.as_str().ok_or_else(wrong)?;
            parse_duration(s)?;
            Ok(Bound::Text(s.to_owned()))
        }
        ParamType::Choice => {
            let s = text().ok_or_else(wrong)?;
            let choices = param.choices.clone().unwrap_or_default();
            if !choices.contains(&s) {
                return Err(format!(
                    "expected one of {}, got {s:?}",
                    choices
                        .iter()
                        .map(|c| format!("{c:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Ok(Bound::Text(s))
        }
    }
}

/// Whether a table with optional `if`/`unless` keys is kept.
fn condition(dict: &Dict, bound: &BTreeMap<String, Bound>) -> Result<bool, String> {
    let mut keep = true;
    for (key, want) in [("if", true), ("unless", false)] {
        if let Some(v) = dict.get(key) {
            let name = v
                .as_str()
                .ok_or_else(|| format!("`{key}` must name a parameter (a bug in the recipe)"))?;
            let b = bound.get(name).ok_or_else(|| {
                format!("`{key}` names no parameter: {name:?} (a bug in the recipe)")
            })?;
            keep &= b.truthy() == want;
        }
    }
    Ok(keep)
}

/// The name in a string that is exactly `${name}`.
fn whole_reference(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    (!inner.contains(['{', '}', '$'])).then_some(inner)
}

/// Substitutes parameters into a template value; `None` when it is removed (an unset
/// parameter referred to as a whole).
fn substitute(v: &Value, bound: &BTreeMap<String, Bound>) -> Result<Option<Value>, String> {
    let lookup = |name: &str| {
        bound
            .get(name)
            .ok_or_else(|| format!("unknown parameter ${{{name}}} (a bug in the recipe)"))
    };
    Ok(Some(match v {
        Value::String(tag, s) => {
            if let Some(name) = whole_reference(s) {
                return Ok(match lookup(name)? {
                    Bound::Unset => None,
                    Bound::Text(t) => Some(Value::String(*tag, t.clone())),
                    Bound::Bool(b) => Some(Value::Bool(*tag, *b)),
                    Bound::List(l) => Some(Value::Array(
                        *tag,
                        l.iter().map(|s| Value::from(s.clone())).collect(),
                    )),
                });
            }
            Value::String(*tag, interpolate(s, &lookup)?)
        }
        Value::Array(tag, items) => {
            let mut out = Vec::new();
            for item in items {
                if let Some(d) = item.as_dict().filter(|d| d.contains_key("then")) {
                    if condition(d, bound)? {
                        let then = d
                            .get("then")
                            .and_then(Value::as_array)
                            .ok_or("`then` must be a list (a bug in the recipe)".to_owned())?;
                        for t in then {
                            splice(&mut out, t, bound)?;
                        }
                    }
                    continue;
                }
                splice(&mut out, item, bound)?;
            }
            Value::Array(*tag, out)
        }
        Value::Dict(tag, d) => {
            let mut out = Dict::new();
            for (k, item) in d {
                if let Some(s) = substitute(item, bound)? {
                    out.insert(k.clone(), s);
                }
            }
            Value::Dict(*tag, out)
        }
        other => other.clone(),
    }))
}

/// Pushes a substituted array item; a whole reference to a list adds its items.
fn splice(
    out: &mut Vec<Value>,
    item: &Value,
    bound: &BTreeMap<String, Bound>,
) -> Result<(), String> {
    let is_list_ref = item
        .as_str()
        .and_then(whole_reference)
        .is_some_and(|n| matches!(bound.get(n), Some(Bound::List(_))));
    match substitute(item, bound)? {
        Some(Value::Array(_, items)) if is_list_ref => out.extend(items),
        Some(v) => out.push(v),
        None => {}
    }
    Ok(())
}

/// Replaces each `${name}` inside a longer text; the parameter must have a text value.
fn interpolate<'a>(
    s: &str,
    lookup: &impl Fn(&str) -> Result<&'a Bound, String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {s:?} (a bug in the recipe)"))?;
        let name = &after[..end];
        match lookup(name)? {
            Bound::Text(t) => out.push_str(t),
            Bound::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Bound::Unset => {
                return Err(format!(
                    "${{{name}}} is not set but is needed in {s:?} (a bug in the recipe: guard it with `if`)"
                ));
            }
            Bound::List(_) => {
                return Err(format!(
                    "list ${{{name}}} used inside {s:?} (a bug in the recipe)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe_step(toml: &str) -> Value {
        Figment::from(Toml::string(toml))
            .extract::<Value>()
            .expect("test step parses")
    }

    fn expand_one(toml: &str) -> Result<Vec<ExpandedStep>, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let steps = expand_steps("plan[0]", &[recipe_step(toml)], &mut errors);
        if errors.is_empty() {
            Ok(steps)
        } else {
            Err(errors)
        }
    }

    fn command(step: &ExpandedStep) -> Vec<String> {
        step.value.as_dict().unwrap()["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_shipped_recipe_parses_and_documents_every_parameter() {
        for (name, text) in FILES {
            let r = parse(text).unwrap_or_else(|e| panic!("recipe {name}: {e}"));
            assert!(!r.summary.is_empty(), "{name}: summary");
            assert!(!r.tested.is_empty(), "{name}: tested");
            assert!(!r.step.is_empty(), "{name}: steps");
            for (p, param) in &r.param {
                assert!(!param.doc.is_empty(), "{name}: parameter {p} has no doc");
                assert!(
                    !(param.required && param.default.is_some()),
                    "{name}: parameter {p} is required and has a default"
                );
                assert_eq!(
                    param.kind == ParamType::Choice,
                    param.choices.is_some(),
                    "{name}: parameter {p}: choices go with type choice"
                );
                assert!(
                    text.contains(&format!("${{{p}}}")) || text.contains(&format!("\"{p}\"")),
                    "{name}: parameter {p} is never used"
                );
            }
        }
    }

    #[test]
    fn unknown_missing_and_ill_typed_parameters_are_errors_with_their_path() {
        let errors = expand_one(
            r#"type = "recipe"
recipe = "sqlite-restore"
with = { databse = "/x.db", backup = "relative.db", timeout = 5 }"#,
        )
        .unwrap_err();
        let paths: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert!(
            paths.iter().any(
                |(p, m)| *p == "plan[0].step[0].with.databse" && m.contains("has no parameter")
            ),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|(p, m)| *p == "plan[0].step[0].with.database" && m.contains("is required")),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|(p, m)| *p == "plan[0].step[0].with.backup" && m.contains("absolute path")),
            "{paths:?}"
        );
        assert!(
            paths
                .iter()
                .any(|(p, m)| *p == "plan[0].step[0].with.timeout" && m.contains("duration")),
            "{paths:?}"
        );
    }

    #[test]
    fn an_unknown_recipe_is_an_error_listing_the_known_ones() {
        let errors = expand_one("type = \"recipe\"\nrecipe = \"postgres\"").unwrap_err();
        assert_eq!(errors[0].path, "plan[0].step[0].recipe");
        assert!(errors[0].message.contains("postgres-restore"), "{errors:?}");
    }

    #[test]
    fn an_integer_below_its_minimum_or_negative_is_refused() {
        let errors = expand_one(
            r#"type = "recipe"
recipe = "alembic-downgrade"
with = { config = "/srv/app/alembic.ini", steps = 0 }"#,
        )
        .unwrap_err();
        assert_eq!(errors[0].path, "plan[0].step[0].with.steps");
        assert_eq!(errors[0].message, "must be at least 1, got 0");
        let errors = expand_one(
            r#"type = "recipe"
recipe = "redis-flush"
with = { all = true, db = -1 }"#,
        )
        .unwrap_err();
        assert_eq!(errors[0].message, "must be at least 0, got -1");
    }

    #[test]
    fn a_value_that_starts_with_a_dash_is_refused() {
        let errors = expand_one(
            r#"type = "recipe"
recipe = "heroku"
with = { app = "--help" }"#,
        )
        .unwrap_err();
        assert_eq!(errors[0].path, "plan[0].step[0].with.app");
        assert!(errors[0].message.contains("option"), "{errors:?}");
    }

    #[test]
    fn lists_are_spliced_and_optional_groups_follow_their_parameter() {
        let steps = expand_one(
            r#"type = "recipe"
recipe = "redis-flush"
scripts_dir = "/opt/rg/"
with = { patterns = ["session:*", "cache:*"], socket = "/run/redis.sock", db = 2 }"#,
        )
        .unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(
            command(&steps[0]),
            [
                "/opt/rg/redis-flush",
                "--socket",
                "/run/redis.sock",
                "--db",
                "2",
                "--",
                "session:*",
                "cache:*"
            ]
        );
        assert_eq!(steps[0].path, "plan[0].step[0].expanded[0]");
        assert!(steps[0].default_name.starts_with("redis-flush: "));
    }

    #[test]
    fn ordinary_steps_pass_through_unchanged_with_their_own_path() {
        let mut errors = Vec::new();
        let plain = recipe_step("type = \"exec\"\ncommand = [\"/bin/true\"]");
        let steps = expand_steps("plan[3]", std::slice::from_ref(&plain), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(steps[0].path, "plan[3].step[0]");
        assert_eq!(steps[0].default_name, "step 1");
        assert_eq!(steps[0].value, plain);
    }
}
