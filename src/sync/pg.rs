//! Connections to the fleet's PostgreSQL: tokio-postgres through a small deadpool pool, over
//! TLS with rustls (the ring provider, as everywhere else) when the URL's `sslmode` asks for
//! it.
//!
//! `sslmode=require`, `verify-ca` and `verify-full` all verify the server's certificate and
//! name (rustls does not connect unverified); `disable` (the default) connects in plain. The password can come from `sync.postgres.password`, overriding the URL's.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

use super::SyncError;
use crate::config::{BrokerTlsConfig, PostgresConfig};
use crate::publish::tls::TlsMaterial;

/// How long taking a connection from the pool (connecting, if none is idle) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keyed requests claim their keys concurrently: enough connections that they rarely queue.
const POOL_SIZE: usize = 16;

/// A pool of connections to `config`'s database; connects lazily.
pub fn pool(config: &PostgresConfig) -> Result<Pool, SyncError> {
    let (url, tls) = config
        .connection_url()
        .map_err(|e| SyncError::Config(format!("sync.postgres.url: {e}")))?;
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|_| SyncError::Config("sync.postgres.url: not a postgres:// URL".into()))?;
    if let Some(password) = &config.password {
        pg.password(password.expose());
    }
    pg.connect_timeout(CONNECT_TIMEOUT);
    pg.application_name("orchestron");
    let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = if tls {
        let material = TlsMaterial::read(&BrokerTlsConfig {
            ca: config.ca.clone(),
            cert: None,
            key: None,
            server_name: None,
        })
        .map_err(|e| SyncError::Config(format!("sync.postgres.ca: {e}")))?;
        let client = material.client_config().map_err(SyncError::Config)?;
        pg.ssl_mode(SslMode::Require);
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(client);
        Manager::from_config(pg, connector, manager_config)
    } else {
        pg.ssl_mode(SslMode::Disable);
        Manager::from_config(pg, tokio_postgres::NoTls, manager_config)
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| SyncError::Config(format!("sync.postgres: {e}")))
}
