//! Every knob, with its default, its flag and its environment variable.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "hookline",
    version,
    about = "Payments ledger with a transactional outbox and signed webhook callbacks"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: the HTTP API (the embedded default).
    Serve(ServeArgs),
    /// Run the HTTP API only.
    Api(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// The database: a SQLite file path or `sqlite:` URL (the embedded default, created if
    /// missing), or a `postgres://` URL for the scale-out mode. Migrations apply at start.
    #[arg(
        long,
        env = "HOOKLINE_DATABASE_URL",
        default_value = "hookline.db",
        global = true
    )]
    pub database_url: String,

    /// The operator credential (a long random string) for operator-only endpoints:
    /// creating marketplaces, reporting processor outcomes, reading across marketplaces.
    /// Unset, those endpoints answer 403.
    #[arg(
        long,
        env = "HOOKLINE_OPERATOR_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub operator_token: Option<String>,

    /// Log format: `text` for people, `json` for log pipelines. Levels come from `RUST_LOG`
    /// (default `info`).
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// PostgreSQL connection pool size, per process.
    #[arg(
        long,
        env = "HOOKLINE_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HOOKLINE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
