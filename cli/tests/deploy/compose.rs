//! docker-compose.yml as `docker compose` reads it, as far as the checks need:
//! YAML, `${VAR}` interpolation (from `.env.example`), and the commented
//! scale-out override merged on top of the base file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

pub const COMPOSE_FILE: &str = "docker-compose.yml";
const SCALE_OUT_START: &str = "# --- scale-out example";
const SCALE_OUT_END: &str = "# --- end of scale-out example";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate sits in the workspace")
        .to_path_buf()
}

pub fn read_repo_file(name: &str) -> String {
    let path = repo_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn parse_yaml(text: &str, what: &str) -> Yaml {
    let mut docs =
        YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{what}: expected one YAML document");
    docs.remove(0)
}

/// The compose file as written (before interpolation).
pub fn base() -> Yaml {
    parse_yaml(&read_repo_file(COMPOSE_FILE), COMPOSE_FILE)
}

/// The commented scale-out block, uncommented: a compose override file.
pub fn scale_out_override_text() -> String {
    let text = read_repo_file(COMPOSE_FILE);
    let block: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with(SCALE_OUT_START))
        .take_while(|l| !l.starts_with(SCALE_OUT_END))
        .skip_while(|l| *l != "# services:")
        .collect();
    assert!(
        !block.is_empty(),
        "{COMPOSE_FILE}: no commented `services:` block after `{SCALE_OUT_START}`"
    );
    block
        .iter()
        .map(|line| match *line {
            "#" => "",
            line => line.strip_prefix("# ").unwrap_or_else(|| {
                panic!("scale-out example: every line must start with '# ': {line:?}")
            }),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The base file with the scale-out override merged on top (`docker compose -f a -f b`).
pub fn scaled_out() -> Yaml {
    merge(
        &base(),
        &parse_yaml(&scale_out_override_text(), "the scale-out example"),
    )
}

/// Compose's merge for the keys we use: mappings merge key by key, anything
/// else in the override replaces the base value.
pub fn merge(base: &Yaml, over: &Yaml) -> Yaml {
    match (base, over) {
        (Yaml::Hash(b), Yaml::Hash(o)) => {
            let mut out = b.clone();
            for (key, value) in o {
                let merged = match b.get(key) {
                    Some(existing) => merge(existing, value),
                    None => value.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Yaml::Hash(out)
        }
        (_, over) => over.clone(),
    }
}

pub fn services(doc: &Yaml) -> Vec<(String, Yaml)> {
    doc["services"]
        .as_hash()
        .expect("a top-level `services` mapping")
        .iter()
        .map(|(name, def)| (scalar(name).expect("service name"), def.clone()))
        .collect()
}

pub fn service(doc: &Yaml, name: &str) -> Yaml {
    let def = &doc["services"][name];
    assert!(!def.is_badvalue(), "{COMPOSE_FILE}: no service {name:?}");
    def.clone()
}

/// A scalar as compose sees it: numbers and booleans become their text.
pub fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `environment:` in either form (mapping, or a list of `NAME=value`).
pub fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| {
                let key = scalar(k).expect("environment name");
                (key, scalar(v).unwrap_or_default())
            })
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item).expect("environment entry");
                let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A command-like value: a list, or a string split on whitespace.
pub fn words(y: &Yaml) -> Vec<String> {
    match y {
        Yaml::Array(items) => items
            .iter()
            .map(|i| scalar(i).expect("a scalar in a command list"))
            .collect(),
        other => scalar(other)
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    }
}

/// The exec form of a healthcheck `test`: `["CMD", prog, args…]`, or for
/// `CMD-SHELL` the shell line as one word.
pub fn healthcheck_command(service: &Yaml) -> Option<Vec<String>> {
    let test = words(&service["healthcheck"]["test"]);
    match test.first().map(String::as_str) {
        Some("CMD") => Some(test[1..].to_vec()),
        Some("CMD-SHELL") => Some(vec![test[1..].join(" ")]),
        _ => None,
    }
}

pub fn depends_on(service: &Yaml) -> BTreeMap<String, String> {
    match &service["depends_on"] {
        Yaml::Hash(map) => map
            .iter()
            .map(|(k, v)| {
                let condition = scalar(&v["condition"]).unwrap_or_else(|| "service_started".into());
                (scalar(k).expect("service name"), condition)
            })
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|i| (scalar(i).expect("service name"), "service_started".into()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Services run from our image (they are the ones whose settings we check).
pub fn is_ours(service: &Yaml) -> bool {
    !service["build"].is_badvalue()
        || scalar(&service["image"]).is_some_and(|i| i.starts_with("mangahub:"))
}

/// `NAME=value` lines of an env file (comments and blank lines skipped).
pub fn env_file(name: &str) -> BTreeMap<String, String> {
    read_repo_file(name)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}: not NAME=value: {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// One piece of a string as compose's interpolation sees it.
enum Piece<'a> {
    Text(&'a str),
    /// `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:?error}` …
    Var {
        name: &'a str,
        op: &'a str,
        arg: &'a str,
    },
}

fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push(Piece::Text(&rest[..at]));
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix('$') {
            out.push(Piece::Text("$"));
            rest = escaped;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("unterminated ${ in compose file");
            let inner = &braced[..end];
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let (name, modifier) = inner.split_at(name_len);
            let op_len = if modifier.starts_with(':') { 2 } else { 1 }.min(modifier.len());
            let (op, arg) = modifier.split_at(op_len);
            out.push(Piece::Var { name, op, arg });
            rest = &braced[end + 1..];
        } else {
            let name_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            out.push(Piece::Var {
                name: &after[..name_len],
                op: "",
                arg: "",
            });
            rest = &after[name_len..];
        }
    }
    out.push(Piece::Text(rest));
    out
}

/// Names a string takes from the environment.
pub fn referenced_vars(s: &str) -> BTreeSet<String> {
    pieces(s)
        .into_iter()
        .filter_map(|p| match p {
            Piece::Var { name, .. } => Some(name.to_owned()),
            Piece::Text(_) => None,
        })
        .collect()
}

/// Substitutes variables like compose does; `${X:?msg}` with X unset is an error.
pub fn interpolate(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for piece in pieces(s) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var { name, op, arg } => {
                let value = vars.get(name).map(String::as_str);
                let set_nonempty = value.filter(|v| !v.is_empty());
                let resolved = match op {
                    "" => value.unwrap_or(""),
                    ":-" => set_nonempty.unwrap_or(arg),
                    "-" => value.unwrap_or(arg),
                    ":?" => set_nonempty.ok_or_else(|| format!("{name}: {arg}"))?,
                    "?" => value.ok_or_else(|| format!("{name}: {arg}"))?,
                    other => return Err(format!("unsupported modifier {other:?} in {s:?}")),
                };
                out.push_str(resolved);
            }
        }
    }
    Ok(out)
}

/// Every string in the tree interpolated.
pub fn interpolate_tree(y: &Yaml, vars: &BTreeMap<String, String>) -> Yaml {
    match y {
        Yaml::String(s) => Yaml::String(interpolate(s, vars).unwrap_or_else(|e| panic!("{e}"))),
        Yaml::Array(items) => {
            Yaml::Array(items.iter().map(|i| interpolate_tree(i, vars)).collect())
        }
        Yaml::Hash(map) => Yaml::Hash(
            map.iter()
                .map(|(k, v)| (k.clone(), interpolate_tree(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every variable referenced anywhere in the tree.
pub fn vars_in_tree(y: &Yaml, out: &mut BTreeSet<String>) {
    match y {
        Yaml::String(s) => out.extend(referenced_vars(s)),
        Yaml::Array(items) => items.iter().for_each(|i| vars_in_tree(i, out)),
        Yaml::Hash(map) => map.values().for_each(|v| vars_in_tree(v, out)),
        _ => {}
    }
}

/// `host` and `port` of a URL such as `postgres://u:p@host:5432/db` or `http://h:8083`.
pub fn url_host_port(url: &str) -> (String, Option<u16>) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    match host_port.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.parse().ok()),
        None => (host_port.to_owned(), None),
    }
}

#[test]
fn interpolation_follows_compose_rules() {
    let vars: BTreeMap<String, String> = [("A", "1"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let ok = |s: &str| interpolate(s, &vars).expect(s);
    assert_eq!(ok("x${A}y$A"), "x1y1");
    assert_eq!(ok("${EMPTY:-d} ${EMPTY-d} ${NONE-d}"), "d  d");
    assert_eq!(ok("$$A ${A:?set A}"), "$A 1");
    assert!(interpolate("${EMPTY:?must be set}", &vars).is_err());
    assert!(interpolate("${NONE?must be set}", &vars).is_err());
    assert_eq!(
        referenced_vars("a ${B:?x} $C $$D"),
        ["B", "C"].into_iter().map(str::to_owned).collect()
    );
    assert_eq!(
        url_host_port("postgres://u:p@db:5432/x"),
        ("db".into(), Some(5432))
    );
    assert_eq!(url_host_port("redis://cache"), ("cache".into(), None));
}
