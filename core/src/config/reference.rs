//! docs/configuration.md checked against the configuration types, in both directions,
//! so the reference cannot drift: every key the structs have is documented (found by
//! serializing a parsed config, which writes every field, `None` ones as null), every
//! documented key is accepted with its documented example (`deny_unknown_fields`
//! refuses the rest), each documented default is what serde's `default_*` gives, and
//! the page's complete example is a valid configuration that uses every key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value as Json;
use toml::{Table, Value};

use super::Config;

const DOC: &str = include_str!("../../../docs/configuration.md");
/// What `NAME` in a documented path becomes in the configurations the tests build.
const NAME: &str = "x";

/// One row of a reference table.
#[derive(Debug)]
struct DocKey {
    /// `jobs.NAME.retention.keep_last`
    path: String,
    kind: String,
    default: String,
    example: String,
}

/// The documented sections (`[jobs.NAME.retention]` → `jobs.NAME.retention`) and keys.
fn parse_doc() -> (BTreeSet<String>, Vec<DocKey>) {
    let mut sections = BTreeSet::new();
    let mut keys = Vec::new();
    let mut section: Option<String> = None;
    for line in DOC.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading
                .strip_prefix("`[")
                .and_then(|h| h.strip_suffix("]`"))
                .map(str::to_string);
            sections.extend(section.clone());
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 5, "a reference row needs 5 cells: {line}");
        let unquote = |c: &str| c.trim_matches('`').to_string();
        keys.push(DocKey {
            path: format!("{section}.{}", unquote(cells[0])),
            kind: cells[1].to_string(),
            default: unquote(cells[2]),
            example: unquote(cells[3]),
        });
    }
    assert!(keys.len() > 50, "the reference tables were not found");
    (sections, keys)
}

/// The ```toml block under "## A complete example".
fn complete_example() -> &'static str {
    let (_, rest) = DOC
        .split_once("## A complete example")
        .expect("a complete example section");
    let (_, block) = rest.split_once("```toml\n").expect("a toml block");
    block.split_once("```").expect("end of the toml block").0
}

/// A documented value (`"3m"`, `[]`, `{ a = "b" }`) as TOML.
fn value(text: &str, key: &DocKey) -> Value {
    let table: Table = toml::from_str(&format!("v = {text}"))
        .unwrap_or_else(|e| panic!("{}: `{text}` is not a TOML value: {e}", key.path));
    table["v"].clone()
}

fn concrete(path: &str) -> Vec<String> {
    path.split('.')
        .map(|p| if p == "NAME" { NAME } else { p }.to_string())
        .collect()
}

fn set(table: &mut Table, path: &str, v: Value) {
    let parts = concrete(path);
    let (last, parents) = parts.split_last().expect("non-empty path");
    let mut t = table;
    for p in parents {
        t = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{path}: `{p}` is not a table"));
    }
    t.insert(last.clone(), v);
}

fn remove(table: &mut Table, path: &str) {
    let parts = concrete(path);
    let (last, parents) = parts.split_last().expect("non-empty path");
    let mut t = table;
    for p in parents {
        t = t.get_mut(p).and_then(Value::as_table_mut).expect("parent");
    }
    t.remove(last);
}

fn lookup<'a>(json: &'a Json, path: &str) -> &'a Json {
    concrete(path)
        .iter()
        .fold(json, |j, p| j.get(p).unwrap_or(&Json::Null))
}

fn deserialize(table: Table) -> Result<Config, String> {
    Value::Table(table)
        .try_into::<Config>()
        .map_err(|e| e.to_string())
}

fn to_json(config: &Config) -> Json {
    serde_json::to_value(config).expect("a config serializes")
}

/// The smallest configuration the doc allows: its required keys (with their examples)
/// and every documented table of a job, empty.
fn minimal(sections: &BTreeSet<String>, keys: &[DocKey]) -> Table {
    let mut table = Table::new();
    for s in sections.iter().filter(|s| s.starts_with("jobs.NAME.")) {
        set(&mut table, s, Value::Table(Table::new()));
    }
    for k in keys.iter().filter(|k| k.default == "required") {
        set(&mut table, &k.path, value(&k.example, k));
    }
    table
}

/// Every key path in a serialized config: maps (`hosts`, `jobs`) become `NAME`, a
/// documented key is a leaf even if its value is a table (`repository.options`), a
/// documented section is walked when set and skipped when not (`retention` of a job
/// without one).
fn struct_keys(
    json: &Json,
    sections: &BTreeSet<String>,
    documented: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![(String::new(), json)];
    while let Some((at, json)) = stack.pop() {
        let Json::Object(map) = json else {
            continue;
        };
        for (k, v) in map {
            let path = match at.as_str() {
                "" => k.clone(),
                "hosts" | "jobs" => format!("{at}.NAME"),
                _ => format!("{at}.{k}"),
            };
            if documented.contains(&path) || !(v.is_object() || sections.contains(&path)) {
                out.insert(path);
            } else {
                stack.push((path, v));
            }
        }
    }
    out
}

/// Every key path written in a TOML table (the complete example).
fn toml_keys(table: &Table, at: &str, documented: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    for (k, v) in table {
        let path = match at {
            "" => k.clone(),
            "hosts" | "jobs" => format!("{at}.NAME"),
            _ => format!("{at}.{k}"),
        };
        match v {
            Value::Table(t) if !documented.contains(&path) => toml_keys(t, &path, documented, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

#[test]
fn every_struct_key_is_documented_and_every_documented_key_exists() {
    let (sections, keys) = parse_doc();
    let documented: BTreeSet<String> = keys.iter().map(|k| k.path.clone()).collect();
    assert_eq!(documented.len(), keys.len(), "a key is documented twice");
    let config = Config::parse(Path::new("/etc/bk/bk.toml"), complete_example())
        .unwrap_or_else(|e| panic!("the complete example is not a valid configuration: {e}"));
    let j = &config.jobs["app-db"];
    assert!(
        j.retention.is_some() && j.restore_test.is_some() && j.alerts.is_some(),
        "the complete example must set every table of a job, so their keys are seen"
    );
    let in_structs = struct_keys(&to_json(&config), &sections, &documented);
    let undocumented: Vec<_> = in_structs.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys of the configuration types missing from docs/configuration.md: {undocumented:?}"
    );
    let unknown: Vec<_> = documented.difference(&in_structs).collect();
    assert!(
        unknown.is_empty(),
        "docs/configuration.md documents keys the types do not have: {unknown:?}"
    );
    for s in &sections {
        assert!(
            documented.iter().any(|k| k.starts_with(&format!("{s}."))),
            "section [{s}] documents no key"
        );
    }
    let example: Table = toml::from_str(complete_example()).expect("toml");
    let mut used = BTreeSet::new();
    toml_keys(&example, "", &documented, &mut used);
    let unused: Vec<_> = documented.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "the complete example does not use: {unused:?}"
    );
}

#[test]
fn every_documented_example_is_accepted_with_its_documented_type() {
    let (sections, keys) = parse_doc();
    let base = minimal(&sections, &keys);
    deserialize(base.clone()).expect("the minimal configuration deserializes");
    for k in &keys {
        let v = value(&k.example, k);
        let kind = k.kind.as_str();
        let type_ok = match &v {
            Value::String(_) => {
                !(kind.starts_with("list")
                    || kind.starts_with("table")
                    || kind == "integer"
                    || kind == "boolean")
            }
            Value::Integer(_) => kind == "integer" || kind == "size",
            Value::Boolean(_) => kind == "boolean",
            Value::Float(_) => kind == "number",
            Value::Array(items) => kind == "list of strings" && items.iter().all(Value::is_str),
            Value::Table(items) => kind == "table of strings" && items.values().all(Value::is_str),
            _ => false,
        };
        assert!(
            type_ok,
            "{}: example `{}` is not a {kind}",
            k.path, k.example
        );
        let mut t = base.clone();
        set(&mut t, &k.path, v);
        let config =
            deserialize(t).unwrap_or_else(|e| panic!("{} = {} is refused: {e}", k.path, k.example));
        assert!(
            !lookup(&to_json(&config), &k.path).is_null(),
            "{} = {} did not set anything",
            k.path,
            k.example
        );
    }
}

#[test]
fn documented_defaults_are_the_real_defaults() {
    let (sections, keys) = parse_doc();
    let base = minimal(&sections, &keys);
    let defaults = to_json(&deserialize(base.clone()).expect("minimal config"));
    let mut checked = BTreeMap::new();
    for k in &keys {
        match k.default.as_str() {
            "required" => {
                let mut t = base.clone();
                remove(&mut t, &k.path);
                let err = deserialize(t).err().unwrap_or_else(|| {
                    panic!("{} is documented as required but may be left out", k.path)
                });
                let name = k.path.rsplit('.').next().unwrap_or_default();
                assert!(
                    err.contains(&format!("missing field `{name}`")),
                    "{}: {err}",
                    k.path
                );
            }
            "unset" => assert!(
                lookup(&defaults, &k.path).is_null(),
                "{} is documented as unset by default but defaults to {}",
                k.path,
                lookup(&defaults, &k.path)
            ),
            literal => {
                let mut t = base.clone();
                set(&mut t, &k.path, value(literal, k));
                let with = to_json(&deserialize(t).unwrap_or_else(|e| {
                    panic!(
                        "{}: the documented default {literal} is refused: {e}",
                        k.path
                    )
                }));
                assert_eq!(
                    lookup(&with, &k.path),
                    lookup(&defaults, &k.path),
                    "{}: documented default {literal} differs from the real default",
                    k.path
                );
            }
        }
        checked.insert(k.path.clone(), k.default.clone());
    }
    assert_eq!(checked.len(), keys.len());
}
