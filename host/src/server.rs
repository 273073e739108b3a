//! Starting the HTTP application: [`Application::build`] binds its own listener (port 0 in
//! tests) and serves [`crate::api::router`]; [`open_registry`] loads the plugin registry and
//! installs the plugins directory; [`serve`] is `cartridge serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::cli::ServeArgs;
use crate::db::Db;
use crate::plugin::{Runtime, RuntimeConfig, WatchPolicy};
use crate::registry::directory::PluginsDirectory;
use crate::registry::{Registry, RegistryConfig};

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
        let shipping = crate::shipping::Shipping::new(db.clone());
        if crate::demo::seed(&catalog, &inventory, &shipping, crate::api::now_ms()).await? {
            tracing::info!("demo store seeded");
        }
    }
    if args.native_rules && !cfg!(feature = "native-rules") {
        anyhow::bail!("--native-rules needs a build with the `native-rules` feature");
    }
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(args.database.data_dir.join("cache")),
        native_rules: args.native_rules,
        max_instances: args.max_instances,
        reuse_instances: !args.fresh_instances,
        ..RuntimeConfig::default()
    })?;
    let config = RegistryConfig {
        watch: WatchPolicy {
            sample_every: args.call_log_every,
            trip_after: args.crash_loop_after,
        },
        poll_interval: Duration::from_millis(args.registry_poll_ms.max(10)),
        secrets: crate::plugin::SecretPolicy {
            dirs: [
                std::path::PathBuf::from("/run/secrets"),
                absolute(&args.database.data_dir.join("secrets")),
            ]
            .into_iter()
            .chain(args.secrets_dirs.iter().map(|d| absolute(d)))
            .collect(),
        },
        ..RegistryConfig::default()
    };
    let (registry, directory) = open_registry(
        db.clone(),
        Arc::new(runtime),
        config,
        Some(&args.plugins_dir),
    )
    .await?;
    let _registry_tasks = registry.spawn();
    let _directory_watch = directory.map(|directory| {
        tokio::spawn(directory.watch(
            crate::registry::directory::DEBOUNCE,
            Duration::from_secs(10),
        ))
    });
    let mut state = AppState::new(db, registry);
    if let Some(token) = args.metrics_token.as_deref().filter(|t| !t.is_empty()) {
        state = state.with_metrics_token(token);
    }
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

/// `path` made absolute against the working directory (secret references are absolute).
fn absolute(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The registry over `db`, with the bundles of `plugins_dir` installed by one scan (a bundle
/// that is refused is reported and skipped; it never stops the others). The returned
/// directory follows later changes once its [`PluginsDirectory::watch`] runs.
pub async fn open_registry(
    db: Db,
    runtime: Arc<Runtime>,
    config: RegistryConfig,
    plugins_dir: Option<&Path>,
) -> anyhow::Result<(Registry, Option<PluginsDirectory>)> {
    let registry = Registry::open(db, runtime, config).await?;
    let directory = match plugins_dir {
        Some(dir) if dir.is_dir() => {
            let mut directory = PluginsDirectory::new(dir.to_owned(), registry.clone());
            let report = directory.scan().await;
            for (bundle, code, message) in &report.refused {
                tracing::error!(bundle = %bundle.display(), code, "plugin not installed: {message}");
            }
            Some(directory)
        }
        Some(dir) => {
            tracing::warn!(dir = %dir.display(), "no plugins directory; serving what the registry holds");
            None
        }
        None => None,
    };
    for plugin in registry.snapshot().plugins() {
        tracing::info!(plugin = %plugin.manifest().id(), hook = %plugin.hook(), "plugin active");
    }
    Ok((registry, directory))
}
