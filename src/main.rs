//! The `orchestron` command: parses the command line and hands over to the library.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use orchestron::cli;
use orchestron::cli::args::{Cli, Command};
use orchestron::telemetry::{self, LogFormat};

fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Serve { config } => serve(&config, args.log_format),
        Command::CheckConfig { config, postgres } => check_config(&config, postgres),
        Command::HashKey => hash_key(),
        Command::Dlq { connection, command } => {
            operator(async move { cli::dlq(&connection, &command).await })
        }
        Command::Event { connection, command } => {
            operator(async move { cli::event(&connection, &command).await })
        }
        Command::Outbox { connection, command } => {
            operator(async move { cli::outbox(&connection, &command).await })
        }
        Command::Fleet { connection, command } => {
            operator(async move { cli::fleet(&connection, &command).await })
        }
        Command::Sync { config, command } => {
            operator(async move { cli::sync(&config, &command).await })
        }
        Command::Store { config, command } => {
            operator(async move { cli::store(&config, &command) })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orchestron: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command and prints its output.
fn operator(
    command: impl std::future::Future<Output = Result<String, cli::CliError>>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let output = runtime.block_on(command)?;
    // A reader that stops early (`| head`, `| grep -q`) is not an error.
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", output.trim_end()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn check_config(path: &std::path::Path, postgres: bool) -> anyhow::Result<()> {
    let config = orchestron::config::load(path)?;
    let live = orchestron::live::LiveConfig::build(&config)?;
    if let Some(tls) = &config.server.tls {
        let metrics = std::sync::Arc::new(orchestron::telemetry::metrics::Metrics::new());
        orchestron::server::tls::TlsState::load(tls, metrics)?;
    }
    println!("{}: OK ({} schemas)", path.display(), live.schemas.len());
    let text = std::fs::read_to_string(path)?;
    for warning in config.exposed_secrets(path, &text) {
        eprintln!("warning: {warning}");
    }
    if postgres {
        let sync = config.sync.as_ref().context("--postgres: the config has no sync: section")?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (current, latest) = runtime.block_on(orchestron::sync::schema_version(sync))?;
        println!(
            "PostgreSQL: reachable; schema {} at version {current} (this build: {latest})",
            sync.postgres.schema
        );
    }
    Ok(())
}

/// Reads one key from stdin (a trailing newline is not part of it) and prints its hash.
fn hash_key() -> anyhow::Result<()> {
    let mut key = String::new();
    std::io::stdin().read_line(&mut key)?;
    let key = key.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!key.is_empty(), "no key on stdin");
    println!("{}", orchestron::sources::auth::hash_key(key));
    Ok(())
}

fn serve(path: &std::path::Path, log_format: Option<LogFormat>) -> anyhow::Result<()> {
    let config = orchestron::config::load(path)?;
    telemetry::init(log_format.unwrap_or(config.log.format));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    allocator::trim_every(allocator::TRIM_INTERVAL)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        let listeners = orchestron::app::Listeners::bind(&config).await?;
        orchestron::app::run(config, listeners, shutdown).await?;
        Ok(())
    })
}

/// SIGTERM (systemd stop) or SIGINT (Ctrl-C). The handlers are installed when this is
/// called, not when the future is first polled: the daemon polls it only once it is serving,
/// after READY=1, and a SIGTERM in between would otherwise kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// glibc's malloc keeps what a thread frees in that thread's arena, and gives back to the
/// system only the free tail of each arena. Under a steady stream of events whose memory
/// churns (request bodies, redb's page cache replacing pages), the free holes inside the
/// arenas stay resident: with a broker down for minutes, resident memory rose by about
/// 1.5 MB a minute while the live heap stayed flat (docs/reliability.md, the outage suite).
/// `malloc_trim` returns the free pages inside the arenas too; once every few seconds, from
/// a thread of its own, it keeps the resident set at the live heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod allocator {
    use std::time::{Duration, Instant};

    pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

    pub fn trim_every(interval: Duration) -> std::io::Result<()> {
        std::thread::Builder::new().name("malloc trim".into()).spawn(move || {
            loop {
                std::thread::sleep(interval);
                let started = Instant::now();
                // SAFETY: malloc_trim takes no pointer and has no precondition; glibc locks
                // each arena while it walks it.
                let released = unsafe { libc::malloc_trim(0) } == 1;
                tracing::trace!(released, took = ?started.elapsed(), "malloc_trim");
            }
        })?;
        Ok(())
    }
}
