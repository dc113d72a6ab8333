//! `edgeguard token`: mints an HS256 token with an Electric `shape` claim, the kind the
//! jwt-shape filter checks. Without `--secret`/`--secret-file` it signs with the demo secret
//! `make run` configures, so its output works against the demo as is.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use edgeguard_verdict::jwk::MIN_HMAC_SECRET_BYTES;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// The HS256 secret of the `make run` demo (envoy/demo/jwt-shape.json uses the same).
pub const DEMO_SECRET: &str = "edgeguard-demo-secret-not-for-production-0001";
pub const DEMO_ISSUER: &str = "edgeguard-demo";
pub const DEMO_AUDIENCE: &str = "electric";

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Table the token allows: its raw name, as Electric's gatekeeper writes it (`items`,
    /// `GkItems`; a dot is part of the name, the schema goes in `--namespace`).
    #[arg(long)]
    table: String,
    /// Schema of the table, raw (Electric's gatekeeper calls it namespace; default public).
    #[arg(long)]
    namespace: Option<String>,
    /// The `where` clause the token allows, exactly as the client will send it.
    #[arg(long = "where")]
    where_clause: Option<String>,
    /// Bound values for `$n` placeholders: `--params 1=42 --params 2=abc`.
    #[arg(long = "params", value_name = "N=VALUE")]
    params: Vec<String>,
    /// Allowed columns: raw names, comma separated (order does not matter; `--columns id,Title`
    /// allows the columns `id` and `Title`).
    #[arg(long)]
    columns: Option<String>,
    /// `default` or `full`.
    #[arg(long)]
    replica: Option<String>,
    /// `full` or `changes_only`.
    #[arg(long)]
    log: Option<String>,
    /// Allow subset requests (`subset__*` parameters, `POST /v1/shape` bodies; the client's
    /// `requestSnapshot` / `fetchSnapshot`): the claim gets `"subsets": true`. They may only
    /// refer to the token's `--columns`.
    #[arg(long)]
    subsets: bool,
    /// Lifetime, e.g. `60s`, `15m`, `2h`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// HMAC secret (UTF-8 bytes).
    #[arg(
        long,
        env = "EDGEGUARD_TOKEN_SECRET",
        conflicts_with = "secret_file",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// File holding the HMAC secret (a trailing newline is ignored).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// `iss` claim.
    #[arg(long, default_value = DEMO_ISSUER)]
    iss: String,
    /// `aud` claim.
    #[arg(long, default_value = DEMO_AUDIENCE)]
    aud: String,
    /// `sub` claim.
    #[arg(long)]
    sub: Option<String>,
    /// `kid` header.
    #[arg(long)]
    kid: Option<String>,
}

/// Builds the shape claim, validating it with the same code the filter uses.
pub fn shape_claim(args: &TokenArgs) -> Result<Value, String> {
    let mut shape = Map::new();
    shape.insert("table".into(), json!(args.table));
    shape.insert("namespace".into(), json!(args.namespace));
    shape.insert("where".into(), json!(args.where_clause));
    if !args.params.is_empty() {
        let mut params = Map::new();
        for p in &args.params {
            let (n, v) = p
                .split_once('=')
                .ok_or_else(|| format!("--params '{p}' must look like N=VALUE"))?;
            params.insert(n.to_string(), json!(v));
        }
        shape.insert("params".into(), Value::Object(params));
    }
    if let Some(c) = &args.columns {
        // raw names, split as Electric's gatekeeper splits its `columns` parameter
        let cols: Vec<&str> = c.split(',').filter(|c| !c.is_empty()).collect();
        shape.insert("columns".into(), json!(cols));
    } else {
        shape.insert("columns".into(), Value::Null);
    }
    if let Some(r) = &args.replica {
        shape.insert("replica".into(), json!(r));
    }
    if let Some(l) = &args.log {
        shape.insert("log".into(), json!(l));
    }
    if args.subsets {
        shape.insert("subsets".into(), json!(true));
    }
    let claims = json!({ "shape": Value::Object(shape) });
    edgeguard_verdict::shape::shape_from_claim("shape", &claims).map_err(|e| e.to_string())?;
    Ok(claims["shape"].clone())
}

fn secret(args: &TokenArgs) -> Result<Vec<u8>, String> {
    let s = match (&args.secret, &args.secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("--secret-file {}: {e}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => DEMO_SECRET.to_string(),
    };
    if s.len() < MIN_HMAC_SECRET_BYTES {
        return Err(format!(
            "the secret is {} bytes; at least {MIN_HMAC_SECRET_BYTES} are required",
            s.len()
        ));
    }
    Ok(s.into_bytes())
}

/// Mints the token.
pub fn mint(args: &TokenArgs, now: u64) -> Result<String, String> {
    let shape = shape_claim(args)?;
    let mut claims = json!({
        "iss": args.iss,
        "aud": args.aud,
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl.as_secs(),
        "shape": shape,
    });
    if let Some(sub) = &args.sub {
        claims["sub"] = json!(sub);
    }
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = args.kid.clone();
    encode(&header, &claims, &EncodingKey::from_secret(&secret(args)?)).map_err(|e| e.to_string())
}

pub fn run(args: TokenArgs) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    println!("{}", mint(&args, now)?);
    Ok(())
}

#[cfg(test)]
mod subsets_flag_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenArgs,
    }

    fn claim(argv: &[&str]) -> Value {
        let cli =
            Cli::try_parse_from(std::iter::once("token").chain(argv.iter().copied())).unwrap();
        shape_claim(&cli.args).unwrap()
    }

    #[test]
    fn subsets_flag_mints_the_grant() {
        let c = claim(&["--table", "items", "--columns", "id,title", "--subsets"]);
        assert_eq!(c["subsets"], json!(true));
        let shape =
            edgeguard_verdict::shape::shape_from_claim("shape", &json!({ "shape": c })).unwrap();
        assert!(shape.subsets);
        assert!(claim(&["--table", "items"]).get("subsets").is_none());
    }
}
