//! Loading the file: read it (and the `config_file`s it names), expand `${VAR}`, parse,
//! validate every snapshot (the default and one per `nodes[]` entry), build and check them.
//! The result is all snapshots or every problem found; nothing in between.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::NodeKey;
use crate::model::{self, ConfigFile, FilterSpec};
use crate::snapshot::Snapshot;
use crate::validate::{self, Context, Issue};

/// The largest configuration file (and `config_file`, and the file after `${VAR}` expansion)
/// accepted: 16 MiB, far above any real configuration, refused before it is read.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The deepest nesting accepted, checked before parsing (see `edgeguard_yaml_guard`).
pub const MAX_DEPTH: usize = edgeguard_yaml_guard::MAX_DEPTH;

/// A file that does not make a consistent set of snapshots: every problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub Vec<Issue>);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().take(10).map(ToString::to_string).collect();
        write!(f, "{}", shown.join("; "))?;
        if self.0.len() > 10 {
            write!(f, "; and {} more", self.0.len() - 10)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// An accepted file.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub snapshots: BTreeMap<NodeKey, Snapshot>,
    /// Lines worth logging that did not refuse the file.
    pub warnings: Vec<String>,
}

/// What one load attempt saw and concluded.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The files read (the YAML first): what to watch.
    pub inputs: Vec<PathBuf>,
    /// A hash of their bytes: an unchanged fingerprint needs no reload.
    pub fingerprint: String,
    pub result: Result<Loaded, Refused>,
}

/// Loads `path` with the process environment and file system.
pub fn load(path: &Path) -> Attempt {
    let env = |name: &str| std::env::var(name).ok();
    let exists = |p: &Path| p.exists();
    load_with(path, &env, &exists)
}

/// [`load`] with the environment and existence check given.
pub fn load_with(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> Attempt {
    let mut attempt = Attempt {
        inputs: vec![path.to_path_buf()],
        fingerprint: String::new(),
        result: Err(Refused(Vec::new())),
    };
    let mut hasher = Sha256::new();
    let text = match edgeguard_yaml_guard::read_limited(path, MAX_FILE_BYTES) {
        Ok(bytes) => {
            hasher.update(&bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => {
            attempt.fingerprint = format!("unreadable: {e}");
            attempt.result = Err(Refused(vec![Issue::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            )]));
            return attempt;
        }
    };
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let result = parse_file(&text, env).and_then(|mut file| {
        let mut read = |rel: &str| -> Result<String, String> {
            let p = base.join(rel);
            attempt.inputs.push(p.clone());
            match edgeguard_yaml_guard::read_limited(&p, MAX_FILE_BYTES) {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
                Err(e) => Err(format!("cannot read {}: {e}", p.display())),
            }
        };
        inline_config_files(&mut file, &mut read)?;
        let wasm_dir = match &file.wasm_dir {
            Some(d) => base.join(d),
            None => base.clone(),
        };
        let native_dir = file.native_dir.as_ref().map(|d| base.join(d));
        build_all(&file, &wasm_dir, native_dir.as_deref(), env, exists)
    });
    let digest = hasher.finalize();
    attempt.fingerprint = digest.iter().map(|b| format!("{b:02x}")).collect();
    attempt.result = result;
    attempt
}

fn parse_file(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ConfigFile, Refused> {
    let refused = |e: String| Refused(vec![Issue::new("", e)]);
    let expanded = model::expand_env(text, env).map_err(refused)?;
    // bounded before parsing: a huge or deeply nested document would stall the YAML scanner
    edgeguard_yaml_guard::check_size(expanded.len() as u64, MAX_FILE_BYTES)
        .map_err(|e| refused(format!("after ${{VAR}} expansion, {e}")))?;
    edgeguard_yaml_guard::check_depth(&expanded, MAX_DEPTH)
        .map_err(|e| refused(format!("invalid YAML: {e}")))?;
    model::parse(&expanded).map_err(|e| refused(format!("invalid YAML: {e}")))
}

fn inline_config_files(
    file: &mut ConfigFile,
    read: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<(), Refused> {
    let mut issues = Vec::new();
    let mut inline = |prefix: String, filters: &mut [FilterSpec]| {
        for (i, f) in filters.iter_mut().enumerate() {
            let Some(rel) = f.config_file.clone() else {
                continue;
            };
            let path = format!("{prefix}filters[{i}].config_file");
            if f.config.is_some() {
                issues.push(Issue::new(path, "give 'config' or 'config_file', not both"));
                continue;
            }
            match read(&rel).and_then(|text| {
                serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| format!("{rel} is not JSON: {e}"))
            }) {
                Ok(v) => f.config = Some(v),
                Err(e) => issues.push(Issue::new(path, e)),
            }
        }
    };
    inline(String::new(), &mut file.filters);
    for (i, n) in file.nodes.iter_mut().enumerate() {
        if let Some(filters) = n.filters.as_mut() {
            inline(format!("nodes[{i}]."), filters);
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Refused(issues))
    }
}

/// Validates and builds the default snapshot and one per `nodes[]` entry.
pub fn build_all(
    file: &ConfigFile,
    wasm_dir: &Path,
    native_dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<Loaded, Refused> {
    let ctx = Context {
        wasm_dir,
        native_dir,
        env,
        exists,
    };
    let mut issues: Vec<Issue> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut snapshots = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut add =
        |key: NodeKey, result: Result<validate::Plan, Vec<Issue>>, issues: &mut Vec<Issue>| {
            match result.and_then(|plan| {
                for w in &plan.warnings {
                    if !warnings.contains(w) {
                        warnings.push(w.clone());
                    }
                }
                Snapshot::build(&plan)
            }) {
                Ok(s) => {
                    snapshots.insert(key, s);
                }
                Err(found) => {
                    for i in found {
                        if !issues.contains(&i) {
                            issues.push(i);
                        }
                    }
                }
            }
        };
    add(
        NodeKey::Default,
        validate::check(&file.sections(), &|_| String::new(), &ctx),
        &mut issues,
    );
    for (i, n) in file.nodes.iter().enumerate() {
        let key = match (&n.node, &n.cluster) {
            (Some(id), None) if !id.is_empty() => NodeKey::Id(id.clone()),
            (None, Some(c)) if !c.is_empty() => NodeKey::Cluster(c.clone()),
            _ => {
                issues.push(Issue::new(
                    format!("nodes[{i}]"),
                    "needs exactly one of 'node' (an Envoy node id) or 'cluster' (a node cluster)",
                ));
                continue;
            }
        };
        if !seen.insert(key.clone()) {
            issues.push(Issue::new(
                format!("nodes[{i}]"),
                format!("duplicate entry for {key}"),
            ));
            continue;
        }
        let Some((sections, prefixes)) = model::merged(file, i) else {
            continue;
        };
        let prefix = |section: &str| prefixes.get(section).cloned().unwrap_or_default();
        add(key, validate::check(&sections, &prefix, &ctx), &mut issues);
    }
    if issues.is_empty() {
        Ok(Loaded {
            snapshots,
            warnings,
        })
    } else {
        Err(Refused(issues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ResourceType;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const JWT: &str = r#"{"providers":{"demo":{"issuer":"i","hmac":{"secret":"0123456789abcdef0123456789abcdef"}}},"rules":[{"match":{"prefix":"/"},"provider":"demo"}]}"#;

    const YAML: &str = r#"
wasm_dir: wasm
upstreams: [{ name: echo, endpoints: ["127.0.0.1:${ECHO_PORT:-18080}"] }]
filters: [{ name: jwt, type: jwt-shape, config_file: jwt.json }]
listeners: [{ name: main, address: "127.0.0.1:10000", filters: [jwt] }]
routes: [{ match: { prefix: / }, upstream: echo }]
nodes:
  - node: b
    routes: [{ match: { prefix: / }, direct_response: { status: 200, body: b } }]
  - cluster: canary
    filters: []
    listeners: [{ name: main, address: "127.0.0.1:10000" }]
"#;

    fn env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn loads_every_snapshot_with_config_files_inlined() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "jwt.json", JWT);
        let p = write(dir.path(), "xds.yaml", YAML);
        let a = load_with(&p, &env, &|_| false);
        assert_eq!(a.inputs, vec![p.clone(), dir.path().join("jwt.json")]);
        let loaded = a.result.unwrap();
        let keys: Vec<String> = loaded.snapshots.keys().map(ToString::to_string).collect();
        assert_eq!(keys, vec!["node:b", "cluster:canary", "default"]);
        // the module is missing on this host: a warning, not a refusal
        assert!(
            loaded.warnings[0].contains("wasm/jwt_shape.wasm does not exist"),
            "{:?}",
            loaded.warnings
        );
        let d = &loaded.snapshots[&NodeKey::Default];
        let b = &loaded.snapshots[&NodeKey::Id("b".into())];
        let c = &loaded.snapshots[&NodeKey::Cluster("canary".into())];
        assert_ne!(
            d.version(ResourceType::Route),
            b.version(ResourceType::Route)
        );
        assert_eq!(
            d.version(ResourceType::Listener),
            b.version(ResourceType::Listener)
        );
        assert!(c
            .resources(ResourceType::ExtensionConfig)
            .unwrap()
            .items
            .is_empty());

        // same bytes, same fingerprint; an edit of the config file changes it
        let again = load_with(&p, &env, &|_| true);
        assert_eq!(again.fingerprint, a.fingerprint);
        write(dir.path(), "jwt.json", &JWT.replace("\"i\"", "\"j\""));
        assert_ne!(load_with(&p, &env, &|_| true).fingerprint, a.fingerprint);
    }

    #[test]
    fn refusals_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "jwt.json", JWT);
        let cases = [
            (YAML.replace("upstream: echo", "upstream: api"), "routes[0].upstream: no upstream named 'api'"),
            (YAML.replace("config_file: jwt.json", "config_file: nope.json"), "filters[0].config_file: cannot read"),
            (YAML.replace("- cluster: canary", "- node: b"), "nodes[1]: duplicate entry for node:b"),
            (YAML.replace("- cluster: canary", "- cluster: \"\""), "nodes[1]: needs exactly one of 'node'"),
            (
                YAML.replace("filters: []", "filters: [{ name: x, type: floor }]\n    routes: [{ match: { prefix: / }, upstream: gone }]"),
                "nodes[1].routes[0].upstream: no upstream named 'gone'",
            ),
            (YAML.replace("${ECHO_PORT:-18080}", "${ECHO_PORT}"), "environment variable ECHO_PORT is not set"),
            (YAML.replace("routes: [{", "routes: [{{"), "invalid YAML"),
            (
                format!("{YAML}deep: {}\n", "[".repeat(100_000)),
                "invalid YAML: nested more than 64 levels deep at line 13",
            ),
            (
                format!("{YAML}deep: {}\n", "{a: ".repeat(100_000)),
                "invalid YAML: nested more than 64 levels deep at line 13",
            ),
            (
                YAML.replace("${ECHO_PORT:-18080}", &format!("${{HUGE:-{}}}", "1".repeat(17 << 20))),
                "more than the limit of 16777216 bytes",
            ),
        ];
        for (yaml, want) in cases {
            let p = write(dir.path(), "xds.yaml", &yaml);
            let err = load_with(&p, &env, &|_| true).result.unwrap_err();
            assert!(err.to_string().contains(want), "want {want:?} in {err}");
        }
        let big = write(
            dir.path(),
            "big.yaml",
            &format!("{YAML}#{}", "x".repeat(16 << 20)),
        );
        let err = load_with(&big, &env, &|_| true).result.unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read ")
                && err
                    .to_string()
                    .ends_with(" bytes, more than the limit of 16777216 bytes"),
            "{err}"
        );
        let missing = load_with(&dir.path().join("none.yaml"), &env, &|_| true);
        assert!(missing
            .result
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
