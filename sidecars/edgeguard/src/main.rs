//! `edgeguard`: the sidecar roles in one binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod echo;
mod migrate;
mod token;

#[derive(Parser)]
#[command(
    name = "edgeguard",
    version,
    about = "edgeguard sidecars and tools for the Envoy data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a shape-scoped HS256 token (prints the token only).
    Token(Box<token::TokenArgs>),
    /// Run a small upstream that echoes each request back as JSON (demo and tests).
    Echo(echo::EchoArgs),
    /// Serve Envoy ext_authz (PEAS-compatible portal-app verdicts) from Postgres or a YAML file.
    Authz(Box<edgeguard_authz::AuthzArgs>),
    /// Apply edgeguard's SQL to a Postgres: usage table and change-notify triggers (and,
    /// with --grove-schema, PEAS's Grove tables for a fresh demo database).
    Migrate(migrate::MigrateArgs),
    /// Serve Envoy its configuration over ADS (LDS/RDS/CDS/EDS/ECDS) from a YAML file.
    Xds(Box<edgeguard_xds::XdsArgs>),
    /// Electric's gatekeeper: authenticate callers, decide their shape by policy, answer a
    /// shape-scoped token signed with rotating keys (JWKS served); `rotate` writes a new key.
    Gatekeeper(Box<edgeguard_gatekeeper::GatekeeperArgs>),
    /// Device identity: enrollment tokens (admin API), CSRs signed by the fleet CA into
    /// client certificates with a SPIFFE id, the device registry (Postgres or a YAML file).
    Enroll(Box<edgeguard_enroll::EnrollArgs>),
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token(args) => token::run(*args),
        Command::Echo(args) => runtime().and_then(|rt| rt.block_on(echo::run(args))),
        Command::Authz(args) => runtime().and_then(|rt| {
            rt.block_on(edgeguard_authz::run(*args))
                .map_err(|e| e.to_string())
        }),
        Command::Migrate(args) => runtime().and_then(|rt| rt.block_on(migrate::run(args))),
        Command::Xds(args) => runtime().and_then(|rt| {
            rt.block_on(edgeguard_xds::run(*args))
                .map_err(|e| e.to_string())
        }),
        Command::Gatekeeper(args) => edgeguard_gatekeeper::main(*args).map_err(|e| e.to_string()),
        Command::Enroll(args) => edgeguard_enroll::main(*args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeguard: {e}");
            ExitCode::from(2)
        }
    }
}
