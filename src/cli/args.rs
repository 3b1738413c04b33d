//! The command line's definition (clap): the `orchestron` binary parses it, and the man page
//! and shell completions in `packaging/` are generated from it (the test below keeps them
//! current: `ORCHESTRON_BLESS=1 cargo test --lib generated_cli_files` rewrites them).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Parser)]
#[command(
    name = "orchestron",
    version,
    about = "Durable webhook relay to Kafka and RabbitMQ",
    long_about = "Durable webhook relay to Kafka and RabbitMQ.\n\n\
        `orchestron serve` receives webhooks over HTTP(S), answers 202 only once an event is \
        fsync'd in its store (/var/lib/orchestron), and delivers it to every destination its \
        route names, at least once, or moves it to the dead-letter queue with a reason. The \
        other commands check the config, inspect and replay the dead-letter queue, show the \
        outbox and the fleet, and maintain the store. The configuration is \
        /etc/orchestron/config.yaml; the documentation is in /usr/share/doc/orchestron."
)]
pub struct Cli {
    /// Log line format on stderr (default: `log.format` from the config, else text).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Also connect to the fleet's PostgreSQL (`sync:`) and report its schema version.
        /// Off by default: the unit runs check-config before every start, and the daemon
        /// starts (and works alone) while PostgreSQL is down.
        #[arg(long)]
        postgres: bool,
    },
    /// Print the `sha256:` form of an API key read from stdin, for `sources.*.api_keys`, so
    /// the config file holds no plaintext key.
    HashKey,
    /// Inspect, replay and purge the dead-letter queue.
    Dlq {
        #[command(flatten)]
        connection: super::ConnectionArgs,
        #[command(subcommand)]
        command: super::DlqCommand,
    },
    /// Look up one event by id.
    Event {
        #[command(flatten)]
        connection: super::ConnectionArgs,
        #[command(subcommand)]
        command: super::EventCommand,
    },
    /// Inspect the outbox.
    Outbox {
        #[command(flatten)]
        connection: super::ConnectionArgs,
        #[command(subcommand)]
        command: super::OutboxCommand,
    },
    /// The fleet of instances sharing one PostgreSQL (`sync:`).
    Fleet {
        #[command(flatten)]
        connection: super::ConnectionArgs,
        #[command(subcommand)]
        command: super::FleetCommand,
    },
    /// The fleet's PostgreSQL schema.
    Sync {
        /// Config file (YAML), whose `sync:` section names the database.
        #[arg(long, short, global = true, default_value = "/etc/orchestron/config.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        command: super::SyncCommand,
    },
    /// The store file.
    Store {
        /// Config file (YAML), whose `store.path` names the file.
        #[arg(long, short, global = true, default_value = "/etc/orchestron/config.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        command: super::StoreCommand,
    },
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::Cli;

    /// The man pages (one per command, `orchestron.1` first) and the completions for bash,
    /// zsh and fish, as installed by the `.deb`: (path in the repository, content).
    fn generated() -> Vec<(String, Vec<u8>)> {
        let pages = tempfile::tempdir().unwrap();
        clap_mangen::generate_to(Cli::command(), pages.path()).expect("renders");
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(pages.path())
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                (format!("packaging/man/{name}"), std::fs::read(entry.path()).unwrap())
            })
            .collect();
        files.sort();
        let completion = |shell: clap_complete::Shell| {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "orchestron", &mut out);
            out
        };
        for (path, shell) in [
            ("packaging/completions/orchestron.bash", clap_complete::Shell::Bash),
            ("packaging/completions/_orchestron", clap_complete::Shell::Zsh),
            ("packaging/completions/orchestron.fish", clap_complete::Shell::Fish),
        ] {
            files.push((path.to_owned(), completion(shell)));
        }
        files
    }

    #[test]
    fn generated_cli_files_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let bless = std::env::var_os("ORCHESTRON_BLESS").is_some();
        let files = generated();
        // No page of a command that is gone.
        let man = root.join("packaging/man");
        for entry in std::fs::read_dir(&man).into_iter().flatten() {
            let name = format!("packaging/man/{}", entry.unwrap().file_name().to_string_lossy());
            if !files.iter().any(|(path, _)| *path == name) {
                if bless {
                    std::fs::remove_file(root.join(&name)).unwrap();
                } else {
                    panic!(
                        "{name} documents no command: run ORCHESTRON_BLESS=1 cargo test --lib generated_cli_files"
                    );
                }
            }
        }
        for (path, content) in files {
            let path = root.join(path);
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &content).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == content,
                "{} is not what the command line generates: run \
                 ORCHESTRON_BLESS=1 cargo test --lib generated_cli_files",
                path.display()
            );
        }
    }
}
