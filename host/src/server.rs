//! Starting the HTTP application: [`Application::build`] binds its own listener (port 0 in
//! tests) and serves [`crate::api::router`]; [`serve`] is `cartridge serve`.

use std::net::SocketAddr;
use std::path::Path;

use axum::Router;
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::cli::ServeArgs;
use crate::plugin::{Plugin, Runtime, RuntimeConfig};

/// A bound, not yet running application.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Binds the listener and builds the routes.
    pub async fn build(addr: SocketAddr, state: AppState) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            router: router(state),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process is told to stop.
    pub async fn run(self) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    }
}

/// `cartridge serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let db = crate::cli::open_database(&args.database).await?;
    if args.demo {
        let catalog = crate::catalog::Catalog::new(db.clone());
        let inventory = crate::inventory::Inventory::new(db.clone());
        if crate::demo::seed(&catalog, &inventory, crate::api::now_ms()).await? {
            tracing::info!("demo store seeded");
        }
    }
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(args.database.data_dir.join("cache")),
        ..RuntimeConfig::default()
    })?;
    let plugins = load_plugins(&runtime, &args.plugins_dir)?;
    let state = AppState::new(db, plugins);
    match &args.admin_token {
        Some(token) => state.add_admin_token("bootstrap", token).await?,
        None => {
            let token = format!("adm_{}", uuid::Uuid::new_v4().simple());
            state
                .add_admin_token("generated at start-up", &token)
                .await?;
            eprintln!(
                "No admin token configured (CARTRIDGE_ADMIN_TOKEN); generated one for this run:\n  {token}"
            );
        }
    }
    let _maintenance = state.spawn_maintenance();
    let app = Application::build(args.addr, state).await?;
    tracing::info!(addr = %app.local_addr()?, "cartridge listening");
    app.run().await?;
    Ok(())
}

/// Loads every plugin bundle in `dir`. A bundle that fails to load is reported and skipped;
/// it never stops the others.
pub fn load_plugins(runtime: &Runtime, dir: &Path) -> anyhow::Result<Vec<Plugin>> {
    let mut plugins = Vec::new();
    if !dir.is_dir() {
        tracing::warn!(dir = %dir.display(), "no plugins directory; starting without plugins");
        return Ok(plugins);
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("plugin.toml").is_file())
        .collect();
    entries.sort();
    for path in entries {
        match runtime.load_dir(&path) {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %plugin.manifest().id(),
                    hook = %plugin.hook(),
                    "plugin loaded"
                );
                plugins.push(plugin);
            }
            Err(e) => {
                tracing::error!(dir = %path.display(), code = e.code(), "plugin not loaded: {e}");
            }
        }
    }
    Ok(plugins)
}
