//! `edgeguard migrate`: applies `sidecars/portal-store/migrations/*.sql` (idempotent).

use clap::Args;

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The Portal database.
    #[arg(long, env = "POSTGRES_CONNECTION_STRING", hide_env_values = true)]
    postgres_connection_string: String,
    /// Also create PEAS's Grove tables (for a fresh demo or test database).
    #[arg(long)]
    grove_schema: bool,
}

pub async fn run(args: MigrateArgs) -> Result<(), String> {
    edgeguard_portal_store::migrate(&args.postgres_connection_string, args.grove_schema)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("edgeguard migrate: done");
    Ok(())
}
