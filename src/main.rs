//! The `orchestron` command: parses the command line and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orchestron::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "orchestron", version, about = "Durable webhook relay to Kafka and RabbitMQ")]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: accept webhooks, store them durably, relay them to the brokers.
    Serve {
        /// Config file (YAML).
        #[arg(long, short, default_value = "/etc/orchestron/config.yaml")]
        config: PathBuf,
    },
    /// Validate a config file (YAML, keys, routes, schemas) and exit non-zero on any problem.
    CheckConfig {
        #[arg(long, short, default_value = "/etc/orchestron/config.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::CheckConfig { config } => check_config(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orchestron: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = orchestron::config::load(path)?;
    let live = orchestron::app::LiveConfig::build(&config)?;
    println!("{}: OK ({} schemas)", path.display(), live.schemas.len());
    Ok(())
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = orchestron::config::load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
        orchestron::app::run(config, listener, shutdown_signal()).await?;
        Ok(())
    })
}

/// SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
