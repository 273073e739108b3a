//! The HTTP application.
//!
//! For now it serves the plugin runtime: health, the installed plugins, and a way to invoke a
//! plugin's hook on a JSON input (what `cartridge plugin run` does, over HTTP). It binds to
//! loopback by default; there is no authentication yet, so do not expose it.
//!
//! [`Application::build`] binds its own listener (port 0 in tests) and [`router`] is usable on
//! its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::plugin::bindings::{fraud, personalization, pricing};
use crate::plugin::{HookError, HookKind, PaymentRequest, Plugin, Runtime, RuntimeConfig};

/// Largest request body accepted.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// Shared state of the application.
#[derive(Clone)]
pub struct AppState {
    plugins: Arc<BTreeMap<String, Arc<Plugin>>>,
}

impl AppState {
    /// State with these plugins installed.
    pub fn new(plugins: Vec<Plugin>) -> Self {
        Self {
            plugins: Arc::new(
                plugins
                    .into_iter()
                    .map(|p| (p.manifest().name.clone(), Arc::new(p)))
                    .collect(),
            ),
        }
    }
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(|| async { Json(json!({"status": "ready"})) }))
        .route("/plugins", get(list_plugins))
        .route("/plugins/{name}/invoke", post(invoke))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A running application.
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
    // Migrations run at start-up; the commerce routes that use the pool come with the core.
    let _db = crate::cli::open_database(&args.database).await?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(args.database.data_dir.join("cache")),
        ..RuntimeConfig::default()
    })?;
    let plugins = load_plugins(&runtime, &args.plugins_dir)?;
    let app = Application::build(args.addr, AppState::new(plugins)).await?;
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

async fn list_plugins(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "plugins": state.plugins.values().map(|p| json!({
            "name": p.manifest().name,
            "version": p.manifest().version,
            "hook": p.hook(),
            "contract": p.manifest().contract,
            "digest": p.digest(),
            "size": p.size(),
            "failure_policy": p.manifest().failure_policy,
            "limits": p.manifest().limits,
        })).collect::<Vec<_>>()
    }))
}

/// An error response: a stable code and a message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "malformed_json"
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<HookError> for ApiError {
    fn from(e: HookError) -> Self {
        // The plugin failed, not the caller and not the host.
        Self::new(StatusCode::BAD_GATEWAY, e.code(), e.to_string())
    }
}

async fn invoke(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(input) = body?;
    let plugin = state.plugins.get(&name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            format!("no plugin named {name:?}"),
        )
    })?;
    let bad_input = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            format!("not a valid {} input: {e}", plugin.hook()),
        )
    };
    let (output, stats) = match plugin.hook() {
        HookKind::Pricing => {
            let cart: pricing::Cart = serde_json::from_value(input).map_err(bad_input)?;
            let call = plugin.price(&cart).await?;
            let priced = crate::pricing::apply(
                &cart,
                &[crate::pricing::PluginOperations {
                    plugin: plugin.reference(),
                    operations: call.output.operations.clone(),
                }],
            );
            (
                json!({"operations": call.output.operations, "priced": priced}),
                call.stats,
            )
        }
        HookKind::Fraud => {
            let checkout: fraud::Checkout = serde_json::from_value(input).map_err(bad_input)?;
            let call = plugin.assess(&checkout).await?;
            (
                serde_json::to_value(call.output).unwrap_or_default(),
                call.stats,
            )
        }
        HookKind::Personalization => {
            let context: personalization::Context =
                serde_json::from_value(input).map_err(bad_input)?;
            let call = plugin.rank(&context).await?;
            (
                serde_json::to_value(call.output).unwrap_or_default(),
                call.stats,
            )
        }
        HookKind::Payment => {
            let request: PaymentRequest = serde_json::from_value(input).map_err(bad_input)?;
            let call = plugin.payment(&request).await?;
            (
                serde_json::to_value(call.output).unwrap_or_default(),
                call.stats,
            )
        }
    };
    Ok(Json(json!({"output": output, "stats": stats})))
}
