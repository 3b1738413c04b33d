//! The operator commands `orchestron dlq ...`, `orchestron outbox stats`,
//! `orchestron fleet status`, `orchestron sync migrate` and `orchestron store compact`.
//!
//! They talk to the running daemon's admin API (address and token from the config file,
//! overridable by flags). With the daemon stopped, `--offline` reads the store file directly,
//! read-only (list, show, stats). Output is a human table, or the API's JSON with `--json`.

pub mod args;

use std::fmt::Write as _;
use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::admin::view::{CountView, DlqEntryView, DlqPageView, EventView, FleetView, OutboxView};
use crate::event::{EventId, now_ms};
use crate::store::{DlqFilter, ReadOnlyStore};

#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    /// Config file: where the admin API listens, its token, the store path.
    #[arg(long, short, global = true, default_value = "/etc/orchestron/config.yaml")]
    pub config: PathBuf,
    /// Admin API base URL (default: http:// + admin.listen from the config).
    #[arg(long, global = true)]
    pub admin_url: Option<String>,
    /// Admin bearer token (default: admin.token from the config).
    #[arg(long, global = true, env = "ORCHESTRON_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// Read the store file directly (daemon stopped; read-only commands only).
    #[arg(long, global = true)]
    pub offline: bool,
}

#[derive(Debug, Default, clap::Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// Matches destinations whose label contains this (e.g. `kafka:orders`).
    #[arg(long)]
    pub destination: Option<String>,
    /// unroutable, rejected, max_attempts, expired or no_route.
    #[arg(long)]
    pub reason: Option<String>,
}

impl FilterArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("source", &self.source),
            ("type", &self.event_type),
            ("destination", &self.destination),
            ("reason", &self.reason),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    fn is_empty(&self) -> bool {
        self.query().is_empty()
    }

    fn filter(&self) -> Result<DlqFilter, CliError> {
        DlqFilter::parse(
            self.source.clone(),
            self.event_type.clone(),
            self.destination.clone(),
            self.reason.as_deref(),
        )
        .map_err(CliError)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered events, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue a listing (the `next_cursor` of the previous page).
        #[arg(long)]
        cursor: Option<u64>,
        /// Every instance's entries, from the fleet's PostgreSQL (`sync:`), with the instance
        /// that holds each.
        #[arg(long)]
        fleet: bool,
    },
    /// Show one entry, with its body and every failed destination.
    Show { event_id: String },
    /// Send entries back to the outbox, for the destinations that failed only.
    Replay {
        /// One entry; or use filters, or --all.
        event_id: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// The entry may be another instance's (`dlq list --fleet`): this one takes it over
        /// and publishes it.
        #[arg(long)]
        fleet: bool,
    },
    /// Delete entries for good.
    Purge {
        event_id: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum EventCommand {
    /// Where one event is: pending (for which destinations, with its attempts), dead-lettered,
    /// or in neither (delivered everywhere and removed, or never accepted here).
    Show { event_id: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// Pending events, oldest age, per-destination backlog.
    Stats,
}

#[derive(Debug, clap::Subcommand)]
pub enum FleetCommand {
    /// Every instance of the fleet: lease age, epoch, outbox and DLQ sizes, version.
    Status,
}

#[derive(Debug, clap::Subcommand)]
pub enum SyncCommand {
    /// Apply the fleet's schema migrations to the configured PostgreSQL now.
    Migrate,
}

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Give the free pages inside the store file back to the filesystem (the daemon stopped;
    /// a running daemon does it by itself in a quiet moment).
    Compact,
}

/// A message for the operator; the command exits 1 with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(String);

/// Where the commands go: the daemon's admin API, or the store file.
enum Backend {
    Api { base: String, token: String, client: reqwest::Client },
    Offline(ReadOnlyStore),
}

impl Backend {
    fn new(args: &ConnectionArgs) -> Result<Self, CliError> {
        let load = || {
            crate::config::load(&args.config)
                .map_err(|e| CliError(format!("cannot read the config: {e}")))
        };
        if args.offline {
            let config = load()?;
            let store =
                ReadOnlyStore::open(&config.store.path).map_err(|e| CliError(e.to_string()))?;
            return Ok(Backend::Offline(store));
        }
        let (base, token) = match (&args.admin_url, &args.token) {
            (Some(url), Some(token)) => (url.clone(), token.clone()),
            (url, token) => {
                let config = load()?;
                let base = url.clone().unwrap_or_else(|| format!("http://{}", config.admin.listen));
                let token = token
                    .clone()
                    .or_else(|| config.admin.enabled_token().map(|t| t.expose().to_owned()))
                    .ok_or_else(|| {
                        CliError(
                            "no admin token: set admin.token in the config or pass --token".into(),
                        )
                    })?;
                (base, token)
            }
        };
        Ok(Backend::Api {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client: reqwest::Client::new(),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        let Backend::Api { base, token, client } = self else {
            return Err(CliError("this command needs the running daemon (drop --offline)".into()));
        };
        let url = format!("{base}{path}");
        let response =
            client.request(method, &url).bearer_auth(token).query(query).send().await.map_err(
                |e| {
                    CliError(format!(
                        "cannot reach the admin API at {base}: {e}. Is the daemon running with \
                     admin.token set? With the daemon stopped, use --offline."
                    ))
                },
            )?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| CliError(format!("unexpected answer from {url}: {e}")));
        }
        let message = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Err(CliError(match status {
            StatusCode::UNAUTHORIZED => {
                "the admin API refused the token (401); check admin.token or --token".to_owned()
            }
            StatusCode::NOT_FOUND if path.starts_with("/admin/dlq") => {
                "not found in the dead-letter queue".to_owned()
            }
            StatusCode::NOT_FOUND if path.starts_with("/admin/events") => message,
            _ => format!("the admin API answered {status}: {message}"),
        }))
    }
}

fn event_id(raw: &str) -> Result<EventId, CliError> {
    EventId::parse(raw).ok_or_else(|| CliError(format!("{raw:?} is not an event id")))
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("views serialize")
}

/// Runs a `dlq` command and returns what to print.
pub async fn dlq(args: &ConnectionArgs, command: &DlqCommand) -> Result<String, CliError> {
    let backend = Backend::new(args)?;
    match command {
        DlqCommand::List { filter, limit, cursor, fleet } => {
            let page: DlqPageView = match &backend {
                Backend::Offline(_) if *fleet => {
                    return Err(CliError("--fleet asks the daemon: drop --offline".into()));
                }
                Backend::Offline(store) => {
                    let page = store
                        .dlq_list(&filter.filter()?, *cursor, *limit)
                        .map_err(|e| CliError(e.to_string()))?;
                    DlqPageView {
                        entries: page.entries.iter().map(|e| DlqEntryView::new(e, false)).collect(),
                        next_cursor: page.next_cursor,
                    }
                }
                Backend::Api { .. } => {
                    let mut query = filter.query();
                    query.push(("limit", limit.to_string()));
                    if let Some(c) = cursor {
                        query.push(("cursor", c.to_string()));
                    }
                    if *fleet {
                        query.push(("scope", "fleet".into()));
                    }
                    backend.call(Method::GET, "/admin/dlq", &query).await?
                }
            };
            Ok(if args.json { to_json(&page) } else { dlq_table(&page) })
        }
        DlqCommand::Show { event_id: raw } => {
            let id = event_id(raw)?;
            let entry: DlqEntryView = match &backend {
                Backend::Offline(store) => {
                    let entry = store.dlq_get(id).map_err(|e| CliError(e.to_string()))?;
                    let entry = entry
                        .ok_or_else(|| CliError("not found in the dead-letter queue".into()))?;
                    DlqEntryView::new(&entry, true)
                }
                Backend::Api { .. } => {
                    backend.call(Method::GET, &format!("/admin/dlq/{id}"), &[]).await?
                }
            };
            Ok(if args.json { to_json(&entry) } else { dlq_detail(&entry) })
        }
        DlqCommand::Replay { event_id: raw, all, filter, fleet } => {
            let path = bulk_path(raw.as_deref(), *all, filter, "replay")?;
            let mut query = filter.query();
            if *fleet {
                if path.is_none() {
                    return Err(CliError("--fleet replays one entry: give its event id".into()));
                }
                query.push(("scope", "fleet".into()));
            }
            let path = path.map(|p| format!("{p}/replay")).unwrap_or("/admin/dlq/replay".into());
            let count: CountView = backend.call(Method::POST, &path, &query).await?;
            let n = count.replayed.unwrap_or(0);
            Ok(if args.json { to_json(&count) } else { format!("replayed {n} event(s)") })
        }
        DlqCommand::Purge { event_id: raw, all, filter } => {
            let path = bulk_path(raw.as_deref(), *all, filter, "purge")?;
            let mut query = filter.query();
            if *all {
                query.push(("all", "true".into()));
            }
            let path = path.unwrap_or("/admin/dlq".into());
            let count: CountView = backend.call(Method::DELETE, &path, &query).await?;
            let n = count.deleted.unwrap_or(0);
            Ok(if args.json { to_json(&count) } else { format!("deleted {n} entr(ies)") })
        }
    }
}

/// `Some(/admin/dlq/<id>)` for one entry, `None` for a filtered or `--all` bulk operation.
fn bulk_path(
    id: Option<&str>,
    all: bool,
    filter: &FilterArgs,
    verb: &str,
) -> Result<Option<String>, CliError> {
    match (id, all, filter.is_empty()) {
        (Some(id), false, true) => Ok(Some(format!("/admin/dlq/{}", event_id(id)?))),
        (None, true, true) | (None, false, false) => Ok(None),
        (None, false, true) => Err(CliError(format!(
            "{verb} what? Give an event id, filters (--source, --type, --destination, --reason), or --all"
        ))),
        _ => Err(CliError("give either an event id, filters, or --all".into())),
    }
}

/// Runs an `outbox` command and returns what to print.
/// Runs an `event` command and returns what to print.
pub async fn event(args: &ConnectionArgs, command: &EventCommand) -> Result<String, CliError> {
    let EventCommand::Show { event_id: raw } = command;
    let id = event_id(raw)?;
    let backend = Backend::new(args)?;
    let view: EventView = match &backend {
        Backend::Offline(store) => {
            let err = |e: crate::store::StoreError| CliError(e.to_string());
            let pending = store.find_pending(id).map_err(err)?;
            let dead = store.dlq_get(id).map_err(err)?;
            EventView::new(id, &pending, dead.as_ref()).ok_or_else(|| {
                CliError(
                    "not in the outbox or the dead-letter queue: delivered to every destination \
                     (and removed), or never accepted by this instance"
                        .into(),
                )
            })?
        }
        Backend::Api { .. } => {
            backend.call(Method::GET, &format!("/admin/events/{id}"), &[]).await?
        }
    };
    if args.json {
        return Ok(to_json(&view));
    }
    let mut out = format!("event {}: {}\n", view.event_id, view.status.replace('_', "-"));
    if let Some(p) = &view.pending {
        let _ = writeln!(
            out,
            "source {}, type {}, received {}, {} bytes{}{}",
            p.source,
            p.event_type,
            p.received_at.as_deref().unwrap_or("-"),
            p.body_bytes,
            if p.routed { "" } else { ", not routed yet" },
            if p.held_for_key { ", held until the fleet rules on its idempotency key" } else { "" }
        );
        let rows = p
            .destinations
            .iter()
            .map(|d| {
                vec![
                    d.destination.clone(),
                    d.status.clone(),
                    d.attempts.to_string(),
                    d.next_attempt_at.clone().unwrap_or_else(|| "-".into()),
                    d.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&table(
            &["DESTINATION", "STATUS", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR"],
            rows,
        ));
    }
    if let Some(d) = &view.dead_lettered {
        let _ = writeln!(
            out,
            "dead-lettered {} ({}); `orchestron dlq show {}` has the body",
            d.dead_lettered_at.as_deref().unwrap_or("-"),
            d.reason,
            d.event_id
        );
        let rows = d
            .destinations
            .iter()
            .map(|x| {
                vec![
                    x.destination.clone(),
                    x.reason.clone(),
                    x.attempts.to_string(),
                    x.last_error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push_str(&table(&["DESTINATION", "REASON", "ATTEMPTS", "LAST ERROR"], rows));
    }
    Ok(out)
}

pub async fn outbox(args: &ConnectionArgs, command: &OutboxCommand) -> Result<String, CliError> {
    let OutboxCommand::Stats = command;
    let backend = Backend::new(args)?;
    let stats: OutboxView = match &backend {
        Backend::Offline(store) => {
            store.outbox_stats(now_ms()).map_err(|e| CliError(e.to_string()))?.into()
        }
        Backend::Api { .. } => backend.call(Method::GET, "/admin/outbox", &[]).await?,
    };
    if args.json {
        return Ok(to_json(&stats));
    }
    let age = stats.oldest_pending_age_seconds.map_or("-".to_owned(), |s| format!("{s:.1} s"));
    let mut out = format!(
        "pending: {} (not routed yet: {}), oldest: {age}, dead-lettered: {}\n",
        stats.pending, stats.unrouted, stats.dlq_entries
    );
    let rows = stats
        .destinations
        .iter()
        .map(|d| {
            vec![
                d.destination.clone(),
                d.broker.clone(),
                d.pending.to_string(),
                d.retrying.to_string(),
                d.failed_attempts.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["DESTINATION", "BROKER", "PENDING", "RETRYING", "FAILED ATTEMPTS"],
        rows,
    ));
    Ok(out)
}

/// Runs a `fleet` command (it needs the running daemon) and returns what to print.
pub async fn fleet(args: &ConnectionArgs, command: &FleetCommand) -> Result<String, CliError> {
    let FleetCommand::Status = command;
    let backend = Backend::new(args)?;
    let view: FleetView = backend.call(Method::GET, "/admin/fleet", &[]).await?;
    if args.json {
        return Ok(to_json(&view));
    }
    let sync = &view.sync;
    let mut out = format!(
        "this instance: {} (epoch {}, {}{}; replication lag {} changes, {:.1} s)\n",
        view.instance_id,
        sync.epoch,
        if sync.connected { "connected" } else { "PostgreSQL unreachable" },
        if sync.lease_lapsed { ", lease lapsed" } else { "" },
        sync.lag_events,
        sync.lag_seconds,
    );
    let rows = view
        .instances
        .iter()
        .map(|m| {
            vec![
                m.instance_id.clone(),
                if m.live { "live".into() } else { "expired".into() },
                format!("{:.1} s", m.lease_age_seconds),
                m.epoch.to_string(),
                m.pending_events.to_string(),
                m.dlq_entries.to_string(),
                m.sync_lag_events.to_string(),
                m.version.clone(),
                m.started_at.clone(),
            ]
        })
        .collect();
    let headers = [
        "INSTANCE",
        "LEASE",
        "LAST HEARTBEAT",
        "EPOCH",
        "PENDING",
        "DLQ",
        "SYNC LAG",
        "VERSION",
        "STARTED",
    ];
    out.push_str(&table(&headers, rows));
    Ok(out)
}

/// Runs a `sync` command and returns what to print.
pub async fn sync(config: &std::path::Path, command: &SyncCommand) -> Result<String, CliError> {
    let SyncCommand::Migrate = command;
    let config = crate::config::load(config)
        .map_err(|e| CliError(format!("cannot read the config: {e}")))?;
    let sync =
        config.sync.as_ref().ok_or_else(|| CliError("the config has no sync: section".into()))?;
    let applied = crate::sync::migrate_now(sync).await.map_err(|e| CliError(e.to_string()))?;
    let latest = crate::sync::migrations::latest();
    Ok(match applied.as_slice() {
        [] => format!("schema {} is current (version {latest})", sync.postgres.schema),
        versions => format!(
            "schema {}: applied {versions:?}; now at version {latest}",
            sync.postgres.schema
        ),
    })
}

/// `orchestron store compact`: compacts the file named by the config's `store.path`.
pub fn store(config: &std::path::Path, command: &StoreCommand) -> Result<String, CliError> {
    let StoreCommand::Compact = command;
    let config = crate::config::load(config)
        .map_err(|e| CliError(format!("cannot read the config: {e}")))?;
    let path = &config.store.path;
    let started = std::time::Instant::now();
    let (before, after) = crate::store::compact_file(path).map_err(|e| CliError(e.to_string()))?;
    let mib = |b: u64| b as f64 / 1_048_576.0;
    Ok(format!(
        "{}: {:.1} MiB -> {:.1} MiB in {:.1} s",
        path.display(),
        mib(before),
        mib(after),
        started.elapsed().as_secs_f64()
    ))
}

fn dlq_table(page: &DlqPageView) -> String {
    let fleet = page.entries.iter().any(|e| e.instance_id.is_some());
    let rows = page
        .entries
        .iter()
        .map(|e| {
            let dests: Vec<_> = e.destinations.iter().map(|d| d.destination.as_str()).collect();
            let instance = fleet.then(|| e.instance_id.clone().unwrap_or_default());
            instance
                .into_iter()
                .chain([
                    e.event_id.clone(),
                    e.event_type.clone(),
                    e.source.clone(),
                    e.reason.clone(),
                    if dests.is_empty() { "-".into() } else { dests.join(",") },
                    e.dead_lettered_at.clone().unwrap_or_default(),
                ])
                .collect()
        })
        .collect();
    let headers =
        ["INSTANCE", "EVENT ID", "TYPE", "SOURCE", "REASON", "DESTINATIONS", "DEAD-LETTERED AT"];
    let mut out = table(&headers[usize::from(!fleet)..], rows);
    if let Some(cursor) = page.next_cursor {
        let _ = writeln!(out, "more: --cursor {cursor}");
    }
    out
}

fn dlq_detail(e: &DlqEntryView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "event id:         {}", e.event_id);
    let _ = writeln!(out, "type:             {}", e.event_type);
    let _ = writeln!(out, "source:           {}", e.source);
    let _ = writeln!(out, "received at:      {}", e.received_at.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "dead-lettered at: {}", e.dead_lettered_at.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "reason:           {}", e.reason);
    for d in &e.destinations {
        let _ = writeln!(
            out,
            "destination:      {} ({}, {} attempts, first {}, last {}): {}",
            d.destination,
            d.reason,
            d.attempts,
            d.first_attempt_at.as_deref().unwrap_or("-"),
            d.last_attempt_at.as_deref().unwrap_or("-"),
            d.last_error.as_deref().unwrap_or("-")
        );
    }
    let body = e.body.as_ref().map(to_json).unwrap_or_default();
    let _ = writeln!(out, "body ({} bytes):\n{body}", e.body_bytes);
    out
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(header_row).chain(rows) {
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
