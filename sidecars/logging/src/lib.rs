//! The log set-up of every `edgeguard` sidecar role: one `tracing` subscriber filtered at the
//! role's level (with its chatty dependencies held at `warn`), writing JSON (one flat object
//! per event, for log pipelines) or text.

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Installs the global subscriber (a second call does nothing). `level` is the role's level
/// (`info`, `debug`, ...), `quiet` a comma-separated list of `crate=level` directives added to it;
/// a level that does not parse falls back to `info`. `ansi`: colour codes in text output.
pub fn init(level: &str, quiet: &str, format: LogFormat, ansi: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},{quiet}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Whether standard output is a terminal (colour only there).
pub fn stdout_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}
