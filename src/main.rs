//! The `hookline` binary: parse the configuration, start logging, run a subcommand.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use hookline::api::ApiConfig;
use hookline::config::{Cli, Command, Config, LogFormat};
use hookline::server;
use hookline::store::{Db, DbOptions};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.config.log_format);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookline: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let db = connect(&cli.config).await?;
    match cli.command {
        Command::Serve(args) | Command::Api(args) => {
            announce_first_start(&db, &args.listen.to_string()).await?;
            let config = ApiConfig {
                operator_token: cli.config.operator_token.clone(),
                max_body_bytes: args.max_body_bytes,
            };
            server::serve_api(db.clone(), config, args.listen).await?;
        }
    }
    db.close().await;
    Ok(())
}

async fn connect(config: &Config) -> Result<Db, Box<dyn std::error::Error>> {
    let options = DbOptions {
        max_connections: config.db_max_connections,
        ..DbOptions::default()
    };
    Ok(Db::connect(&config.database_url, &options).await?)
}

/// Tells the user how to authenticate on the very first start. The secret goes to
/// standard output once, never to the logs.
async fn announce_first_start(db: &Db, listen: &str) -> Result<(), Box<dyn std::error::Error>> {
    if let Some((marketplace, secret)) = server::bootstrap(db).await? {
        println!(
            "\nhookline: created the first marketplace, {id} (\"{name}\").\n\
             Its API secret is shown only this once; keep it:\n\n    {secret}\n\n\
             Try: curl -u {secret}: http://{listen}/orders\n",
            id = marketplace.id,
            name = marketplace.name,
        );
    }
    Ok(())
}
