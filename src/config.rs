//! Every knob, with its default, its flag and its environment variable.
//!
//! The structs holding credentials (the operator token, a verify secret) do not derive
//! `Debug`, so they cannot end up in a log line.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
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

#[derive(Subcommand)]
pub enum Command {
    /// Run everything in one process: the HTTP API and the dispatcher (the embedded default).
    Serve {
        #[command(flatten)]
        api: ServeArgs,
        #[command(flatten)]
        dispatch: DispatchArgs,
    },
    /// Run the HTTP API only.
    Api(ServeArgs),
    /// Run the dispatcher only (on PostgreSQL, as many as you like).
    Dispatch(DispatchArgs),
    /// Verify a delivery's signature, as a receiver would. Reads the body from standard
    /// input (or --body-file); exits 0 if valid, 1 (saying why) if not.
    Verify(VerifyArgs),
}

#[derive(Clone, Args)]
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
        default_value_t = crate::store::DbOptions::default().max_connections,
        global = true
    )]
    pub db_max_connections: u32,

    /// Threads running the API and the dispatcher (tokio's workers). Default: on SQLite one
    /// fewer than the machine's cores (at least one), as SQLite's writer needs a core of its
    /// own; on PostgreSQL every core (with PostgreSQL on the same machine, fewer may serve
    /// better: README, Benchmark).
    #[arg(long, env = "HOOKLINE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..), global = true)]
    pub worker_threads: Option<u16>,
}

impl Config {
    /// The threads asked for with `--worker-threads`, or else the default for the
    /// database's backend ([`crate::store::Backend::default_worker_threads`]).
    pub fn worker_threads(&self) -> usize {
        match self.worker_threads {
            Some(n) => usize::from(n),
            None => crate::store::Backend::of_url(&self.database_url).default_worker_threads(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "HOOKLINE_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "HOOKLINE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,

    /// Refuse callback URLs that are plain http (set this in production).
    #[arg(long, env = "HOOKLINE_REQUIRE_HTTPS")]
    pub require_https: bool,

    /// After a secret rotation, how long the old secret keeps signing beside the new one.
    #[arg(long, env = "HOOKLINE_ROTATION_GRACE_SECS", default_value_t = 24 * 3600)]
    pub rotation_grace_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DispatchArgs {
    /// Deliveries claimed per round trip to the database.
    #[arg(long, env = "HOOKLINE_DISPATCH_BATCH", default_value_t = crate::dispatch::DispatchConfig::default().batch_size)]
    pub dispatch_batch: i64,
    /// How long a claim holds, in seconds; keep it above the request timeout.
    #[arg(long, env = "HOOKLINE_DISPATCH_LEASE_SECS", default_value_t = 60)]
    pub dispatch_lease_secs: u64,
    /// The longest wait before looking for due work when nothing signalled, in ms.
    #[arg(long, env = "HOOKLINE_DISPATCH_POLL_MS", default_value_t = 1000)]
    pub dispatch_poll_ms: u64,
    /// Deliveries this process holds at once: attempts in flight, and claimed ones waiting
    /// for their callback's turn.
    #[arg(long, env = "HOOKLINE_DISPATCH_CONCURRENCY", default_value_t = crate::dispatch::DispatchConfig::default().concurrency)]
    pub dispatch_concurrency: usize,
    /// Attempts in flight at once to one callback (as many again may wait their turn).
    #[arg(long, env = "HOOKLINE_DISPATCH_PER_CALLBACK", default_value_t = crate::dispatch::DispatchConfig::default().per_callback)]
    pub dispatch_per_callback: usize,
    /// Connect timeout per attempt, in ms.
    #[arg(long, env = "HOOKLINE_CONNECT_TIMEOUT_MS", default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    /// Timeout of a whole attempt, answer included, in ms.
    #[arg(long, env = "HOOKLINE_REQUEST_TIMEOUT_MS", default_value_t = 15000)]
    pub request_timeout_ms: u64,
    /// Response bodies are read and kept up to this many bytes.
    #[arg(long, env = "HOOKLINE_MAX_RESPONSE_BYTES", default_value_t = 64 * 1024)]
    pub max_response_bytes: usize,
    /// First retry delay, in ms.
    #[arg(long, env = "HOOKLINE_RETRY_INITIAL_MS", default_value_t = 5000)]
    pub retry_initial_ms: u64,
    /// Each retry waits this many times longer than the one before.
    #[arg(long, env = "HOOKLINE_RETRY_FACTOR", default_value_t = 3.0)]
    pub retry_factor: f64,
    /// The longest wait between two attempts, in seconds.
    #[arg(long, env = "HOOKLINE_RETRY_MAX_DELAY_SECS", default_value_t = 24 * 3600)]
    pub retry_max_delay_secs: u64,
    /// Attempts per delivery, the first included.
    #[arg(long, env = "HOOKLINE_RETRY_MAX_ATTEMPTS", default_value_t = 16)]
    pub retry_max_attempts: u32,
    /// No attempt later than this after the event, in seconds.
    #[arg(long, env = "HOOKLINE_RETRY_MAX_AGE_SECS", default_value_t = 7 * 24 * 3600)]
    pub retry_max_age_secs: u64,
    /// Random spread of each delay: 0.2 is +-20 %.
    #[arg(long, env = "HOOKLINE_RETRY_JITTER", default_value_t = 0.2)]
    pub retry_jitter: f64,
    /// `Retry-After` (on 429 and 503) is honoured up to this many seconds.
    #[arg(long, env = "HOOKLINE_RETRY_AFTER_MAX_SECS", default_value_t = 3600)]
    pub retry_after_max_secs: u64,
    /// A callback with no success for this many seconds is turned off.
    #[arg(long, env = "HOOKLINE_DISABLE_AFTER_SECS", default_value_t = 5 * 24 * 3600)]
    pub disable_after_secs: u64,
    /// Non-public ranges deliveries may go to anyway (CIDR, repeatable or comma-separated),
    /// e.g. 127.0.0.0/8 for local development.
    #[arg(long, env = "HOOKLINE_ALLOW_NETWORKS", value_delimiter = ',')]
    pub allow_network: Vec<ipnet::IpNet>,
    /// On shutdown, how long attempts in flight may take to finish, in seconds.
    #[arg(long, env = "HOOKLINE_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
}

impl DispatchArgs {
    pub fn config(&self) -> crate::dispatch::DispatchConfig {
        use std::time::Duration;
        crate::dispatch::DispatchConfig {
            batch_size: self.dispatch_batch.max(1),
            lease: Duration::from_secs(self.dispatch_lease_secs.max(1)),
            poll_interval: Duration::from_millis(self.dispatch_poll_ms.max(1)),
            concurrency: self.dispatch_concurrency.max(1),
            per_callback: self.dispatch_per_callback.max(1),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_response_bytes: self.max_response_bytes,
            schedule: crate::dispatch::schedule::RetrySchedule {
                initial: Duration::from_millis(self.retry_initial_ms),
                factor: self.retry_factor,
                max_delay: Duration::from_secs(self.retry_max_delay_secs),
                max_attempts: self.retry_max_attempts.max(1),
                max_age: Duration::from_secs(self.retry_max_age_secs),
                jitter: self.retry_jitter,
                retry_after_max: Duration::from_secs(self.retry_after_max_secs),
            },
            disable_after: Duration::from_secs(self.disable_after_secs),
            allow: self.allow_network.clone(),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

#[derive(Clone, Args)]
pub struct VerifyArgs {
    /// The callback's secret (`whsec_...`).
    #[arg(long, env = "HOOKLINE_VERIFY_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The `webhook-id` header.
    #[arg(long)]
    pub id: String,
    /// The `webhook-timestamp` header.
    #[arg(long)]
    pub timestamp: String,
    /// The `webhook-signature` header.
    #[arg(long)]
    pub signature: String,
    /// A file holding the raw body; standard input if not given.
    #[arg(long)]
    pub body_file: Option<std::path::PathBuf>,
    /// Check the signature only, not how old the timestamp is (for replaying logs).
    #[arg(long)]
    pub ignore_time: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
