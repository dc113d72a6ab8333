#![allow(clippy::panic)] // a build script reports failure by panicking
//! Compiles the ext_authz service definition into a protobuf descriptor set for gRPC server
//! reflection (so `grpcurl` needs no .proto files). The .proto files are the ones shipped
//! inside the `envoy-types` crate package; `protox` compiles them without `protoc`.

use std::path::{Path, PathBuf};

fn envoy_types_version(manifest_dir: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(manifest_dir.join("../../Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"envoy-types\"" {
            let v = lines.next()?.trim();
            return v
                .strip_prefix("version = \"")?
                .strip_suffix('"')
                .map(str::to_string);
        }
    }
    None
}

fn proto_dir(manifest_dir: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("ENVOY_TYPES_PROTO_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let version = envoy_types_version(manifest_dir).ok_or("envoy-types not found in Cargo.lock")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry/src");
    let entries =
        std::fs::read_dir(&registry).map_err(|e| format!("{}: {e}", registry.display()))?;
    for entry in entries.flatten() {
        let candidate = entry.path().join(format!("envoy-types-{version}/proto"));
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "envoy-types-{version}/proto not found under {}; set ENVOY_TYPES_PROTO_DIR",
        registry.display()
    ))
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ENVOY_TYPES_PROTO_DIR");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let proto = match proto_dir(&manifest_dir) {
        Ok(p) => p,
        Err(e) => panic!("cannot build the ext_authz reflection descriptor: {e}"),
    };
    let includes: Vec<PathBuf> = [
        "data-plane-api",
        "googleapis",
        "xds",
        "protoc-gen-validate",
        "cel-spec",
        "opentelemetry-proto",
        "client_model",
    ]
    .iter()
    .map(|d| proto.join(d))
    .filter(|p| p.is_dir())
    .collect();
    let set = match protox::compile(["envoy/service/auth/v3/external_auth.proto"], &includes) {
        Ok(s) => s,
        Err(e) => panic!("protox could not compile external_auth.proto: {e}"),
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default())
        .join("ext_authz_descriptor.bin");
    if let Err(e) = std::fs::write(&out, prost::Message::encode_to_vec(&set)) {
        panic!("cannot write {}: {e}", out.display());
    }
}
