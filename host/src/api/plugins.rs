//! `/admin/plugins` and `/admin/hooks`: the operator's plugin registry. Upload a version
//! (validated before it is stored), activate, roll back, disable, reorder a hook, configure,
//! grant capabilities, read the audit log and the call log, shadow-run a candidate, invoke.
//! Every handler takes [`Admin`]; the actor in the audit log is the admin token's name.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Admin, ApiError, AppState};
use crate::hooks::Invocation;
use crate::plugin::HookKind;
use crate::registry::replay::ReplayReport;
use crate::registry::{AuditLog, CallLog, HookOrder, PluginList, StoredPlugin, StoredVersion};

/// Largest upload (manifest plus component).
pub const UPLOAD_LIMIT_BYTES: usize = 32 * 1024 * 1024;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/plugins",
            get(list)
                .post(upload)
                .layer(DefaultBodyLimit::max(UPLOAD_LIMIT_BYTES)),
        )
        .route("/plugins/{name}", get(describe))
        .route("/plugins/{name}/activate", post(activate))
        .route("/plugins/{name}/rollback", post(rollback))
        .route("/plugins/{name}/disable", post(disable))
        .route("/plugins/{name}/enable", post(enable))
        .route("/plugins/{name}/config", put(configure))
        .route(
            "/plugins/{name}/grants/{capability}",
            put(grant).delete(revoke),
        )
        .route(
            "/plugins/{name}/secrets/{secret}",
            put(set_secret).delete(remove_secret),
        )
        .route("/plugins/{name}/audit", get(audit))
        .route("/plugins/{name}/calls", get(calls))
        .route("/plugins/{name}/versions/{version}/replay", post(replay))
        .route("/plugins/{name}/invoke", post(invoke))
        .route("/hooks/{hook}/order", put(reorder))
}

async fn list(_: Admin, State(state): State<AppState>) -> Result<Json<PluginList>, ApiError> {
    Ok(Json(state.registry().list().await?))
}

async fn describe(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(state.registry().describe(&name).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadQuery {
    /// Activate the version once it is stored.
    #[serde(default)]
    activate: bool,
}

/// `multipart/form-data` with a `manifest` part (the `plugin.toml`) and a `component` part
/// (the `.wasm`). `?activate=true` activates the version once it is stored.
async fn upload(
    admin: Admin,
    State(state): State<AppState>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let Query(query) = query?;
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("send multipart/form-data with `manifest` and `component` parts: {e}"),
        )
    })?;
    let bad_part = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "malformed_multipart"
        };
        ApiError::new(status, code, e.body_text())
    };
    let mut manifest = None;
    let mut component = None;
    while let Some(field) = multipart.next_field().await.map_err(bad_part)? {
        match field.name() {
            Some("manifest") => manifest = Some(field.text().await.map_err(bad_part)?),
            Some("component") => component = Some(field.bytes().await.map_err(bad_part)?),
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected part {other:?}: send `manifest` and `component`"
                )));
            }
        }
    }
    let (Some(manifest), Some(component)) = (manifest, component) else {
        return Err(ApiError::invalid(
            "both a `manifest` part and a `component` part are required",
        ));
    };
    let registry = state.registry();
    let actor = admin.actor();
    let stored = registry
        .upload(&actor, "api", &manifest, component.to_vec())
        .await?;
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let plugin = if query.activate {
        registry
            .activate(&actor, &stored.name, &stored.version)
            .await?
    } else {
        registry.describe(&stored.name).await?
    };
    Ok((
        status,
        Json(Uploaded {
            plugin,
            uploaded: stored,
        }),
    ))
}

/// A stored upload: 201 when the version is new, 200 when the same component was already
/// stored under it.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct Uploaded {
    /// The plugin, after the upload (and the activation, when asked).
    plugin: StoredPlugin,
    /// The version stored.
    uploaded: StoredVersion,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Activate {
    /// A stored version of the plugin.
    version: String,
}

async fn activate(
    admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<super::JsonObject<Activate>, ApiError>,
) -> Result<Json<StoredPlugin>, ApiError> {
    let super::JsonObject(body) = body?;
    Ok(Json(
        state
            .registry()
            .activate(&admin.actor(), &name, &body.version)
            .await?,
    ))
}

async fn rollback(
    admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(
        state.registry().rollback(&admin.actor(), &name).await?,
    ))
}

async fn disable(
    admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(
        state
            .registry()
            .set_enabled(&admin.actor(), &name, false)
            .await?,
    ))
}

async fn enable(
    admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(
        state
            .registry()
            .set_enabled(&admin.actor(), &name, true)
            .await?,
    ))
}

/// Replaces the operator's configuration: a JSON object of strings.
async fn configure(
    admin: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<super::JsonObject<BTreeMap<String, String>>, ApiError>,
) -> Result<Json<StoredPlugin>, ApiError> {
    let super::JsonObject(values) = body?;
    Ok(Json(
        state
            .registry()
            .set_config(&admin.actor(), &name, &values)
            .await?,
    ))
}

async fn grant(
    admin: Admin,
    State(state): State<AppState>,
    Path((name, capability)): Path<(String, String)>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(
        state
            .registry()
            .set_grant(&admin.actor(), &name, &capability, true)
            .await?,
    ))
}

async fn revoke(
    admin: Admin,
    State(state): State<AppState>,
    Path((name, capability)): Path<(String, String)>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(
        state
            .registry()
            .set_grant(&admin.actor(), &name, &capability, false)
            .await?,
    ))
}

/// Sets where a secret is: `{"env": "VARIABLE"}` or `{"file": "/path"}`. The value is read
/// at each call and never stored, logged or returned.
async fn set_secret(
    admin: Admin,
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    body: Result<super::JsonObject<crate::plugin::SecretRef>, ApiError>,
) -> Result<Json<StoredPlugin>, ApiError> {
    let super::JsonObject(reference) = body?;
    Ok(Json(
        state
            .registry()
            .set_secret(&admin.actor(), &name, &secret, Some(&reference))
            .await?,
    ))
}

async fn remove_secret(
    admin: Admin,
    State(state): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
) -> Result<Json<StoredPlugin>, ApiError> {
    Ok(Json(
        state
            .registry()
            .set_secret(&admin.actor(), &name, &secret, None)
            .await?,
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limit {
    /// At most this many (default: 100 audit entries, 20 calls).
    limit: Option<u32>,
}

async fn audit(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditLog>, ApiError> {
    let Query(q) = query?;
    Ok(Json(
        state
            .registry()
            .audit_log(Some(&name), i64::from(q.limit.unwrap_or(100)))
            .await?,
    ))
}

/// The latest sampled calls of a plugin (what a shadow run would replay).
async fn calls(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<Limit>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CallLog>, ApiError> {
    let Query(q) = query?;
    Ok(Json(
        state
            .registry()
            .call_log(&name, i64::from(q.limit.unwrap_or(20)))
            .await?,
    ))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Replay {
    /// How many of the latest logged calls (default 100).
    last: Option<u32>,
}

/// Runs a stored version against the last N logged inputs next to the active version.
async fn replay(
    _: Admin,
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<ReplayReport>, ApiError> {
    // An empty body replays the last 100; a malformed one is our JSON error like any other.
    let replay: Replay = super::admin::optional_body(&body)?;
    let last = replay.last.unwrap_or(100);
    let registry = state.registry();
    let candidate = registry.load_candidate(&name, &version).await?;
    let active = state.plugin(&name).map(|p| p.as_ref().clone().unwatched());
    let report = crate::registry::replay::replay(registry.db(), &candidate, active.as_ref(), last)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(report))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Order {
    /// Every active plugin of the hook, in the order they run.
    plugins: Vec<String>,
}

async fn reorder(
    admin: Admin,
    State(state): State<AppState>,
    Path(hook): Path<String>,
    body: Result<super::JsonObject<Order>, ApiError>,
) -> Result<Json<HookOrder>, ApiError> {
    let hook: HookKind = hook
        .parse()
        .map_err(|e: String| ApiError::not_found("unknown_hook", e))?;
    let super::JsonObject(order) = body?;
    Ok(Json(
        state
            .registry()
            .reorder(&admin.actor(), hook, &order.plugins)
            .await?,
    ))
}

/// Runs one plugin's hook on a JSON input: `cartridge plugin run` over HTTP. Not logged and
/// not counted by the crash-loop breaker.
async fn invoke(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Invocation>, ApiError> {
    let Json(input) = body?;
    let plugin = state.plugin(&name).ok_or_else(|| {
        ApiError::not_found("unknown_plugin", format!("no active plugin named {name:?}"))
    })?;
    let plugin = plugin.as_ref().clone().unwatched();
    let invocation = crate::hooks::invoke(&plugin, input)
        .await
        .map_err(|e| match e {
            crate::hooks::InvokeError::Hook(hook) => ApiError::from(hook),
            bad => ApiError::invalid(bad.to_string()),
        })?;
    Ok(Json(invocation))
}
