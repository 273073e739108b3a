//! The plugin registry: every uploaded plugin version with its component, which version of each
//! plugin is active, its place in its hook, the operator's configuration and capability grants,
//! and an audit log — all in the database, so that every host on it serves the same set.
//!
//! - Changing anything goes through [`Registry`]'s methods (the admin API and the watched
//!   directory call the same ones). Each change is one transaction that also moves
//!   `registry_state.generation` on, and writes an audit entry.
//! - Serving reads a [`Snapshot`]: an immutable set of loaded plugins. A request takes one
//!   snapshot and keeps it to its end, so a checkout sees one consistent set of plugin versions
//!   and a call that started on the old version finishes on it. [`Registry::refresh`] builds the
//!   next snapshot off the request path (compiling only what changed) and swaps it in at once.
//! - Each host polls the generation (a one-row read) and refreshes when it moved: a change made
//!   through any host reaches every host within the poll interval plus the load time.
//! - A version is validated before it is stored: it compiles, targets a supported contract,
//!   exports its hook, and a smoke call with a sample input passes within its limits. A version
//!   that fails is refused with the reason and nothing served changes.
//! - [`directory`]: the watched plugins directory; [`replay`]: shadow runs of a candidate
//!   version on logged inputs.

pub mod directory;
pub mod replay;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::db::{Db, args};
use crate::plugin::{
    CallWatch, Capability, HookKind, LoadError, Manifest, Plugin, Runtime, SecretPolicy, SecretRef,
    WatchEvent, WatchPolicy,
};

/// The call log is written at most once per this interval (see `write_events`).
const CALL_LOG_PACE: Duration = Duration::from_millis(250);

/// Rows per insert statement of the call log (8 parameters a row).
const CALL_LOG_ROWS_PER_STATEMENT: usize = 100;

/// How the registry behaves on this host.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Call log sampling and the crash-loop breaker's threshold.
    pub watch: WatchPolicy,
    /// How often the host checks whether another host changed the registry.
    pub poll_interval: Duration,
    /// Logged calls kept per plugin.
    pub call_log_keep: i64,
    /// Where secret references may point.
    pub secrets: SecretPolicy,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            watch: WatchPolicy::default(),
            poll_interval: Duration::from_millis(100),
            call_log_keep: 1000,
            secrets: SecretPolicy::default(),
        }
    }
}

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The upload failed validation; nothing was stored.
    #[error("{message}")]
    Rejected {
        /// `invalid_manifest`, `invalid_component`, `wrong_export`, `capability_denied` or
        /// `smoke_failed`.
        code: &'static str,
        /// The reason.
        message: String,
    },
    /// No such plugin.
    #[error("no plugin named {0:?}")]
    UnknownPlugin(String),
    /// No such version of the plugin.
    #[error("plugin {0:?} has no version {1}")]
    UnknownVersion(String, String),
    /// The version exists with a different component: versions are immutable.
    #[error("{0} {1} is already uploaded with a different component; publish a new version")]
    VersionExists(String, String),
    /// The upload serves another hook than the plugin's existing versions.
    #[error("plugin {name:?} serves the {existing} hook, not {uploaded}")]
    HookMismatch {
        /// The plugin.
        name: String,
        /// Its hook.
        existing: String,
        /// The upload's hook.
        uploaded: String,
    },
    /// Rollback without an earlier active version.
    #[error("plugin {0:?} has no previous version to roll back to")]
    NoPreviousVersion(String),
    /// The version asks for a capability the operator has not granted.
    #[error("plugin {0:?} needs the capability {1:?}, which is not granted")]
    NotGranted(String, String),
    /// Not a capability this host knows.
    #[error("{0}")]
    UnknownCapability(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl RegistryError {
    /// The stable code, as the API reports it.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Rejected { code, .. } => code,
            RegistryError::UnknownPlugin(_) => "unknown_plugin",
            RegistryError::UnknownVersion(..) => "unknown_version",
            RegistryError::VersionExists(..) => "version_exists",
            RegistryError::HookMismatch { .. } => "hook_mismatch",
            RegistryError::NoPreviousVersion(_) => "no_previous_version",
            RegistryError::NotGranted(..) => "capability_not_granted",
            RegistryError::UnknownCapability(_) => "unknown_capability",
            RegistryError::Invalid(_) => "invalid",
            RegistryError::Database(_) => "internal",
        }
    }
}

impl From<LoadError> for RegistryError {
    fn from(e: LoadError) -> Self {
        RegistryError::Rejected {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// What identifies a loaded plugin: when none of it changed, the loaded plugin is reused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadKey {
    name: String,
    version: String,
    digest: String,
    config: String,
    /// Granted capabilities and secret references, as stored.
    grants: String,
    tripped: bool,
    /// The plugin row's `updated_at`: any operator change (enable, config, order) reloads
    /// the plugin with a fresh crash-loop count.
    epoch: i64,
}

#[derive(Debug, Clone)]
struct Entry {
    key: LoadKey,
    position: i64,
    plugin: Arc<Plugin>,
}

/// The plugins a host serves at one moment. Immutable; requests hold it while they run.
#[derive(Debug)]
pub struct Snapshot {
    generation: i64,
    entries: Vec<Entry>,
}

impl Snapshot {
    /// The registry generation this snapshot reflects (-1 before the first load).
    pub fn generation(&self) -> i64 {
        self.generation
    }

    /// The active plugins of a hook, in hook order.
    pub fn hook(&self, kind: HookKind) -> Vec<Arc<Plugin>> {
        self.entries
            .iter()
            .filter(|e| e.plugin.hook() == kind)
            .map(|e| e.plugin.clone())
            .collect()
    }

    /// The active plugin named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.entries
            .iter()
            .find(|e| e.key.name == name)
            .map(|e| e.plugin.clone())
    }

    /// Every active plugin, by hook and order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.entries.iter().map(|e| &e.plugin)
    }
}

// What the registry answers, as the admin API sends it (and `/openapi.json` documents it).
// Fields are declared in alphabetical order, the order the API has always written them in.

/// A stored version, as uploads answer.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StoredVersion {
    /// False when the same component was already stored under this version.
    pub created: bool,
    /// SHA-256 of the component, in hex.
    pub digest: String,
    /// The hook.
    pub hook: HookKind,
    /// The plugin.
    pub name: String,
    /// The component's size in bytes.
    pub size: i64,
    /// The version.
    pub version: String,
}

/// A plugin as stored: its versions, the active one, its place in its hook, the operator's
/// configuration, grants and secret references, and what this host serves of it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct StoredPlugin {
    /// The version every host serves while the plugin is enabled; none before the first
    /// activation.
    pub active_version: Option<String>,
    /// The operator's configuration, laid over the manifest's defaults (null if the stored
    /// configuration cannot be read).
    pub config: Option<BTreeMap<String, String>>,
    /// False once an operator (or the plugins directory) disabled it: no host serves it.
    pub enabled: bool,
    /// The capabilities granted: `secrets`, `http:<host>` or `http:<host>:<port>`.
    pub grants: Vec<String>,
    /// The hook it serves.
    #[schemars(with = "HookKind")]
    pub hook: String,
    /// The plugin's name.
    pub name: String,
    /// Its place in its hook's order, from 0.
    pub position: i64,
    /// The version that was active before the current one (what a rollback activates).
    pub previous_version: Option<String>,
    /// The names of its secrets (where each is, and its value, are never shown).
    pub secrets: Vec<String>,
    /// The version this host serves now; none while it serves none (disabled, or never
    /// activated).
    pub serving_here: Option<ServedVersion>,
    /// When the crash-loop breaker switched it off (Unix ms); none while it is not tripped.
    pub tripped_at: Option<i64>,
    /// The last error before the trip.
    pub tripped_reason: Option<String>,
    /// When an operator last changed it (Unix ms).
    pub updated_at: i64,
    /// Every stored version, oldest first.
    pub versions: Vec<PluginVersion>,
}

/// One stored version of a plugin.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PluginVersion {
    /// SHA-256 of the component, in hex.
    pub digest: String,
    /// The component's size in bytes.
    pub size: i64,
    /// Where it came from: `api` or `directory`.
    pub source: String,
    /// When it was uploaded (Unix ms).
    pub uploaded_at: i64,
    /// Who uploaded it (`admin:<token name>`, or `plugins-directory`).
    pub uploaded_by: String,
    /// The version.
    pub version: String,
}

/// The version of a plugin one host serves.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ServedVersion {
    /// SHA-256 of its component, in hex.
    pub digest: String,
    /// Whether the crash-loop breaker tripped on this host: its hook's failure policy applies
    /// instead of calling it.
    pub tripped: bool,
    /// The version.
    pub version: String,
}

/// Every plugin of the registry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PluginList {
    /// The registry generation this host serves (-1 before its first load).
    pub generation: i64,
    /// By hook, then by position in the hook, then by name.
    pub plugins: Vec<StoredPlugin>,
}

/// A hook's plugins in the order they run.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct HookOrder {
    /// The hook.
    pub hook: HookKind,
    /// Its plugins' names, first to run first.
    pub order: Vec<String>,
}

/// Audit log entries, newest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AuditLog {
    /// The entries.
    pub entries: Vec<AuditEntry>,
}

/// One change to the registry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// `upload`, `activate`, `enable`, `disable`, `configure`, `grant`, `revoke`,
    /// `set-secret`, `remove-secret`, `reorder` or `trip`.
    pub action: String,
    /// Who: `admin:<token name>`, `plugins-directory` or `crash-loop breaker`.
    pub actor: String,
    /// When (Unix ms).
    pub at: i64,
    /// What changed, an object by action: `upload` the version, digest, size and source;
    /// `activate` the version and the previous one; `configure` the keys set (never their
    /// values); `grant` and `revoke` the capability; `set-secret` and `remove-secret` the
    /// secret's name; `reorder` the order; `trip` the version, failures and last error;
    /// `enable` and `disable` nothing.
    pub detail: Value,
    /// The entry's id, increasing.
    pub id: i64,
    /// The plugin, or `hook:<hook>` for a reorder.
    pub plugin: String,
}

/// Logged calls of a plugin, newest first.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CallLog {
    /// The calls.
    pub calls: Vec<LoggedCall>,
}

/// One sampled hook call (what a shadow run replays).
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LoggedCall {
    /// When it was logged (Unix ms).
    pub at: i64,
    /// How long it took, in microseconds.
    pub duration_us: i64,
    /// The failure, `<code>: <message>`; none when the plugin answered.
    pub error: Option<String>,
    /// The entry's id, increasing.
    pub id: i64,
    /// The hook's input, as the plugin got it (null if unreadable).
    pub input: Value,
    /// The plugin's decision (null when it failed).
    pub output: Value,
    /// The version that answered.
    pub version: String,
}

/// The registry of one host, over the shared database.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    runtime: Arc<Runtime>,
    config: RegistryConfig,
    current: RwLock<Arc<Snapshot>>,
    refreshing: tokio::sync::Mutex<()>,
    events: mpsc::Sender<WatchEvent>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<WatchEvent>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("generation", &self.snapshot().generation)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    crate::api::now_ms()
}

impl Registry {
    /// The registry over a migrated database, loaded. Start [`Registry::spawn`] to follow
    /// changes made by other hosts and to write the call log.
    pub async fn open(
        db: Db,
        runtime: Arc<Runtime>,
        config: RegistryConfig,
    ) -> Result<Self, RegistryError> {
        let (events, receiver) = mpsc::channel(4096);
        let registry = Self {
            inner: Arc::new(Inner {
                db,
                runtime,
                config,
                current: RwLock::new(Arc::new(Snapshot {
                    generation: -1,
                    entries: Vec::new(),
                })),
                refreshing: tokio::sync::Mutex::new(()),
                events,
                receiver: std::sync::Mutex::new(Some(receiver)),
            }),
        };
        registry.refresh().await?;
        Ok(registry)
    }

    /// The plugins served now. Hold it for the whole of a request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.inner.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The runtime plugins are loaded into.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.inner.runtime
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// Starts the background work of this host: following the generation, and writing the
    /// call log and breaker trips. Returns the tasks; they run until aborted.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let follower = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(follower.inner.config.poll_interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = follower.refresh().await {
                    tracing::warn!("registry refresh failed: {e}");
                }
            }
        }));
        if self.inner.db.backend() == crate::db::Backend::Postgres {
            let listener = self.clone();
            tasks.push(tokio::spawn(async move {
                listener.follow_notifications().await
            }));
        }
        let receiver = match self.inner.receiver.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(receiver) = receiver {
            let writer = self.clone();
            tasks.push(tokio::spawn(
                async move { writer.write_events(receiver).await },
            ));
        }
        tasks
    }

    /// Refreshes whenever another host announces a change (PostgreSQL), reconnecting after a
    /// second when the connection drops. Polling goes on meanwhile, so a lost notification
    /// only costs the poll interval.
    async fn follow_notifications(&self) {
        loop {
            match self.inner.db.listen(CHANNEL).await {
                Ok(Some(mut listener)) => loop {
                    match listener.recv().await {
                        Ok(_) => {
                            if let Err(e) = self.refresh().await {
                                tracing::warn!("registry refresh failed: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("registry notifications interrupted: {e}");
                            break;
                        }
                    }
                },
                Ok(None) => return,
                Err(e) => tracing::warn!("cannot listen for registry changes: {e:#}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Builds the next snapshot if the registry changed since the current one, reusing every
    /// plugin that did not change, and swaps it in. Returns whether anything was swapped.
    pub async fn refresh(&self) -> Result<bool, RegistryError> {
        let _one_at_a_time = self.inner.refreshing.lock().await;
        let db = &self.inner.db;
        let generation: i64 = sqlx::query("SELECT generation FROM registry_state WHERE id = 1")
            .fetch_one(db.pool())
            .await?
            .try_get("generation")?;
        let current = self.snapshot();
        if generation == current.generation {
            return Ok(false);
        }
        let rows = sqlx::query(
            "SELECT p.name, p.position, p.config, p.tripped_at, p.updated_at, \
                    v.version, v.digest, v.manifest \
             FROM plugins p JOIN plugin_versions v \
               ON v.plugin_name = p.name AND v.version = p.active_version \
             WHERE p.enabled = 1",
        )
        .fetch_all(db.pool())
        .await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut failed = false;
        for row in rows {
            let name: String = row.try_get("name")?;
            let (granted, secrets) = grants_of(db, &name, &self.inner.config.secrets).await?;
            let key = LoadKey {
                grants: format!("{granted:?} {secrets:?}"),
                name,
                version: row.try_get("version")?,
                digest: row.try_get("digest")?,
                config: row.try_get("config")?,
                tripped: row.try_get::<Option<i64>, _>("tripped_at")?.is_some(),
                epoch: row.try_get("updated_at")?,
            };
            let position: i64 = row.try_get("position")?;
            if let Some(same) = current.entries.iter().find(|e| e.key == key) {
                entries.push(Entry {
                    position,
                    ..same.clone()
                });
                continue;
            }
            let manifest_text: String = row.try_get("manifest")?;
            match self.load(&key, &manifest_text).await {
                Ok(plugin) => entries.push(Entry {
                    key,
                    position,
                    plugin: Arc::new(plugin),
                }),
                Err(e) => {
                    // Validated on upload, so this is the host's own trouble (a changed
                    // engine, a damaged row, the database away). Keep serving what served
                    // before, and try again at the next poll.
                    failed = true;
                    tracing::error!(plugin = %key.name, version = %key.version, "cannot load the active version: {e}");
                    if let Some(old) = current.entries.iter().find(|e| e.key.name == key.name) {
                        entries.push(old.clone());
                    }
                }
            }
        }
        entries.sort_by(|a, b| {
            (a.plugin.hook(), a.position, &a.key.name).cmp(&(
                b.plugin.hook(),
                b.position,
                &b.key.name,
            ))
        });
        let changed: Vec<String> = entries
            .iter()
            .filter(|e| !current.entries.iter().any(|c| c.key == e.key))
            .map(|e| format!("{}@{}", e.key.name, e.key.version))
            .collect();
        let next = Arc::new(Snapshot {
            // Not caught up while a load failed: the next poll tries again.
            generation: if failed {
                current.generation
            } else {
                generation
            },
            entries,
        });
        match self.inner.current.write() {
            Ok(mut slot) => *slot = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        tracing::info!(generation, loaded = ?changed, "plugin set swapped");
        Ok(true)
    }

    /// Loads a stored version for serving: compiled off the async threads, configured, watched.
    async fn load(&self, key: &LoadKey, manifest_text: &str) -> Result<Plugin, RegistryError> {
        let component: Vec<u8> = sqlx::query(
            "SELECT component FROM plugin_versions WHERE plugin_name = $1 AND version = $2",
        )
        .bind(&key.name)
        .bind(&key.version)
        .fetch_one(self.inner.db.pool())
        .await?
        .try_get("component")?;
        let manifest = Manifest::parse(manifest_text).map_err(LoadError::from)?;
        let config: BTreeMap<String, String> = serde_json::from_str(&key.config)
            .map_err(|e| RegistryError::Invalid(format!("stored config: {e}")))?;
        let plugin = self.compile(manifest, component).await?;
        let (granted, secrets) =
            grants_of(&self.inner.db, &key.name, &self.inner.config.secrets).await?;
        let plugin = plugin.with_grants(&granted, secrets);
        let watch = CallWatch::new(
            self.inner.config.watch,
            self.inner.events.clone(),
            key.tripped,
            key.epoch,
        );
        Ok(plugin.with_config(&config).watched(Arc::new(watch)))
    }

    async fn compile(&self, manifest: Manifest, wasm: Vec<u8>) -> Result<Plugin, RegistryError> {
        let runtime = self.inner.runtime.clone();
        tokio::task::spawn_blocking(move || runtime.load(manifest, &wasm))
            .await
            .map_err(|e| RegistryError::Invalid(format!("loading was interrupted: {e}")))?
            .map_err(RegistryError::from)
    }

    /// Validates and stores a version. Nothing served changes; [`Registry::activate`] does
    /// that. Uploading the same component under the same version again is a no-op.
    pub async fn upload(
        &self,
        actor: &str,
        source: &str,
        manifest_text: &str,
        wasm: Vec<u8>,
    ) -> Result<StoredVersion, RegistryError> {
        let manifest = Manifest::parse(manifest_text).map_err(LoadError::from)?;
        let name = manifest.name.clone();
        let version = manifest.version.to_string();
        let hook = manifest.hook;
        let size = i64::try_from(wasm.len()).unwrap_or(i64::MAX);
        let overrides = self.config_of(&name).await?.unwrap_or_default();
        let plugin = self.compile(manifest, wasm.clone()).await?;
        // Nothing is granted yet, and validation must not reach out: the smoke call runs with
        // no capabilities (a plugin that needs one to answer a sample input fails it).
        let plugin = plugin
            .with_config(&overrides)
            .with_grants(&[], BTreeMap::new());
        smoke(&plugin).await?;
        let digest = plugin.digest().to_owned();

        let now = now_ms();
        let mut tx = self.inner.db.begin().await?;
        // A new plugin goes last in its hook: installing one never silently takes over the
        // hook (the first payment plugin is the connector checkouts use).
        sqlx::query(
            "INSERT INTO plugins (name, hook, position, created_at, updated_at) \
             SELECT $1, $2, COALESCE(MAX(position) + 1, 0), $3, $3 FROM plugins WHERE hook = $2 \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&name)
        .bind(hook.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let existing_hook: String = sqlx::query("SELECT hook FROM plugins WHERE name = $1")
            .bind(&name)
            .fetch_one(&mut *tx)
            .await?
            .try_get("hook")?;
        if existing_hook != hook.as_str() {
            return Err(RegistryError::HookMismatch {
                name,
                existing: existing_hook,
                uploaded: hook.as_str().to_owned(),
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO plugin_versions \
               (plugin_name, version, digest, manifest, component, size, source, uploaded_by, uploaded_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (plugin_name, version) DO NOTHING",
        )
        .bind(&name)
        .bind(&version)
        .bind(&digest)
        .bind(manifest_text)
        .bind(wasm)
        .bind(size)
        .bind(source)
        .bind(actor)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let stored: String = sqlx::query(
                "SELECT digest FROM plugin_versions WHERE plugin_name = $1 AND version = $2",
            )
            .bind(&name)
            .bind(&version)
            .fetch_one(&mut *tx)
            .await?
            .try_get("digest")?;
            if stored != digest {
                return Err(RegistryError::VersionExists(name, version));
            }
        } else {
            audit(
                &mut tx,
                actor,
                &name,
                "upload",
                json!({"version": version, "digest": digest, "size": size, "source": source}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(StoredVersion {
            created: inserted > 0,
            digest,
            hook,
            name,
            size,
            version,
        })
    }

    async fn config_of(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, RegistryError> {
        let row = sqlx::query("SELECT config FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(self.inner.db.pool())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let text: String = row.try_get("config")?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| RegistryError::Invalid(format!("stored config: {e}")))
    }

    /// Makes `version` the active version of `name` on every host, and re-enables the plugin.
    pub async fn activate(
        &self,
        actor: &str,
        name: &str,
        version: &str,
    ) -> Result<StoredPlugin, RegistryError> {
        let mut tx = self.inner.db.begin().await?;
        let row = sqlx::query(
            "SELECT manifest FROM plugin_versions WHERE plugin_name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| self.unknown(name, version))?;
        let manifest =
            Manifest::parse(&row.try_get::<String, _>("manifest")?).map_err(LoadError::from)?;
        for capability in manifest.requested_capabilities() {
            let capability = capability.to_string();
            let granted = sqlx::query(
                "SELECT 1 AS one FROM plugin_grants WHERE plugin_name = $1 AND capability = $2",
            )
            .bind(name)
            .bind(&capability)
            .fetch_optional(&mut *tx)
            .await?;
            if granted.is_none() {
                return Err(RegistryError::NotGranted(name.to_owned(), capability));
            }
        }
        let previous: Option<String> =
            sqlx::query("SELECT active_version FROM plugins WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?
                .try_get("active_version")?;
        sqlx::query(
            "UPDATE plugins SET \
               previous_version = CASE WHEN active_version = $2 THEN previous_version \
                                       ELSE active_version END, \
               active_version = $2, enabled = 1, tripped_at = NULL, tripped_reason = NULL, \
               updated_at = $3 \
             WHERE name = $1",
        )
        .bind(name)
        .bind(version)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            name,
            "activate",
            json!({"version": version, "previous": previous}),
        )
        .await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.refresh().await?;
        self.describe(name).await
    }

    fn unknown(&self, name: &str, version: &str) -> RegistryError {
        RegistryError::UnknownVersion(name.to_owned(), version.to_owned())
    }

    /// Makes the version that was active before the current one active again.
    pub async fn rollback(&self, actor: &str, name: &str) -> Result<StoredPlugin, RegistryError> {
        let row = sqlx::query("SELECT previous_version FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(self.inner.db.pool())
            .await?
            .ok_or_else(|| RegistryError::UnknownPlugin(name.to_owned()))?;
        let previous: Option<String> = row.try_get("previous_version")?;
        let previous = previous.ok_or_else(|| RegistryError::NoPreviousVersion(name.to_owned()))?;
        self.activate(actor, name, &previous).await
    }

    /// The active version of `name`, if it has one, and whether the plugin is enabled.
    pub async fn serving_state(&self, name: &str) -> Result<(Option<String>, bool), RegistryError> {
        let Some(row) = sqlx::query("SELECT active_version, enabled FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(self.inner.db.pool())
            .await?
        else {
            return Ok((None, false));
        };
        Ok((
            row.try_get("active_version")?,
            row.try_get::<i64, _>("enabled")? == 1,
        ))
    }

    /// Disables `name` if the version it serves came from the plugins directory (a version an
    /// operator activated through the API is the operator's to disable). Returns whether it
    /// did.
    pub async fn disable_directory_plugin(&self, name: &str) -> Result<bool, RegistryError> {
        let from_directory = sqlx::query(
            "SELECT v.source FROM plugins p JOIN plugin_versions v \
               ON v.plugin_name = p.name AND v.version = p.active_version \
             WHERE p.name = $1 AND p.enabled = 1",
        )
        .bind(name)
        .fetch_optional(self.inner.db.pool())
        .await?
        .map(|r| r.try_get::<String, _>("source"))
        .transpose()?
        .is_some_and(|source| source == "directory");
        if from_directory {
            self.set_enabled(directory::ACTOR, name, false).await?;
        }
        Ok(from_directory)
    }

    /// Stops serving `name` on every host (its hook carries on without it), or serves it
    /// again with a fresh crash-loop count.
    pub async fn set_enabled(
        &self,
        actor: &str,
        name: &str,
        enabled: bool,
    ) -> Result<StoredPlugin, RegistryError> {
        let mut tx = self.inner.db.begin().await?;
        let updated = sqlx::query(
            "UPDATE plugins SET enabled = $2, tripped_at = NULL, tripped_reason = NULL, \
             updated_at = $3 WHERE name = $1",
        )
        .bind(name)
        .bind(i64::from(enabled))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(RegistryError::UnknownPlugin(name.to_owned()));
        }
        let action = if enabled { "enable" } else { "disable" };
        audit(&mut tx, actor, name, action, json!({})).await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.refresh().await?;
        self.describe(name).await
    }

    /// Sets the order of a hook's plugins: `names` must list every plugin of the hook once.
    pub async fn reorder(
        &self,
        actor: &str,
        hook: HookKind,
        names: &[String],
    ) -> Result<HookOrder, RegistryError> {
        let mut tx = self.inner.db.begin().await?;
        let mut existing: Vec<String> = sqlx::query("SELECT name FROM plugins WHERE hook = $1")
            .bind(hook.as_str())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("name"))
            .collect::<Result<_, _>>()?;
        existing.sort();
        let mut listed = names.to_vec();
        listed.sort();
        if listed != existing {
            return Err(RegistryError::Invalid(format!(
                "the order must list every {hook} plugin exactly once: {}",
                existing.join(", ")
            )));
        }
        for (position, name) in names.iter().enumerate() {
            sqlx::query("UPDATE plugins SET position = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(i64::try_from(position).unwrap_or(i64::MAX))
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        }
        audit(
            &mut tx,
            actor,
            &format!("hook:{hook}"),
            "reorder",
            json!({"order": names}),
        )
        .await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.refresh().await?;
        Ok(HookOrder {
            hook,
            order: names.to_vec(),
        })
    }

    /// Replaces the operator's configuration of `name` (laid over the manifest's defaults).
    pub async fn set_config(
        &self,
        actor: &str,
        name: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<StoredPlugin, RegistryError> {
        if values.len() > 64 {
            return Err(RegistryError::Invalid(
                "at most 64 configuration values".to_owned(),
            ));
        }
        if let Some((key, _)) = values
            .iter()
            .find(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 4096)
        {
            return Err(RegistryError::Invalid(format!(
                "configuration key {key:?}: keys are 1 to 128 bytes, values at most 4096"
            )));
        }
        let text =
            serde_json::to_string(values).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let mut tx = self.inner.db.begin().await?;
        let updated =
            sqlx::query("UPDATE plugins SET config = $2, updated_at = $3 WHERE name = $1")
                .bind(name)
                .bind(&text)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if updated == 0 {
            return Err(RegistryError::UnknownPlugin(name.to_owned()));
        }
        // Values are the operator's business; the audit says which keys changed, not to what.
        let keys: Vec<&String> = values.keys().collect();
        audit(&mut tx, actor, name, "configure", json!({"keys": keys})).await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.refresh().await?;
        self.describe(name).await
    }

    /// Grants or revokes a capability (`http:<host>[:<port>]` or `secrets`). A grant is needed
    /// before a version asking for it can be activated; a revocation takes effect on every host
    /// at once (calls that need it then fail with `capability_denied`).
    pub async fn set_grant(
        &self,
        actor: &str,
        name: &str,
        capability: &str,
        granted: bool,
    ) -> Result<StoredPlugin, RegistryError> {
        let capability = Capability::parse(capability)
            .map_err(RegistryError::UnknownCapability)?
            .to_string();
        let capability = capability.as_str();
        let mut tx = self.inner.db.begin().await?;
        sqlx::query("SELECT name FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| RegistryError::UnknownPlugin(name.to_owned()))?;
        if granted {
            sqlx::query(
                "INSERT INTO plugin_grants (plugin_name, capability, granted_by, granted_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (plugin_name, capability) DO NOTHING",
            )
            .bind(name)
            .bind(capability)
            .bind(actor)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query("DELETE FROM plugin_grants WHERE plugin_name = $1 AND capability = $2")
                .bind(name)
                .bind(capability)
                .execute(&mut *tx)
                .await?;
        }
        let action = if granted { "grant" } else { "revoke" };
        audit(
            &mut tx,
            actor,
            name,
            action,
            json!({"capability": capability}),
        )
        .await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.refresh().await?;
        self.describe(name).await
    }

    /// Sets where secret `secret` of plugin `name` is (none removes it). Only the reference is
    /// stored; the audit log names the secret, never its value.
    pub async fn set_secret(
        &self,
        actor: &str,
        name: &str,
        secret: &str,
        reference: Option<&SecretRef>,
    ) -> Result<StoredPlugin, RegistryError> {
        if secret.is_empty()
            || secret.len() > 64
            || !secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(RegistryError::Invalid(format!(
                "secret name {secret:?}: use 1 to 64 letters, digits, '-' and '_'"
            )));
        }
        if let Some(reference) = reference {
            self.inner
                .config
                .secrets
                .check(reference)
                .map_err(RegistryError::Invalid)?;
        }
        let mut tx = self.inner.db.begin().await?;
        sqlx::query("SELECT name FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| RegistryError::UnknownPlugin(name.to_owned()))?;
        match reference {
            Some(reference) => {
                let stored = serde_json::to_string(reference)
                    .map_err(|e| RegistryError::Invalid(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO plugin_secrets (plugin_name, name, reference, set_by, set_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (plugin_name, name) DO UPDATE SET \
                       reference = excluded.reference, set_by = excluded.set_by, \
                       set_at = excluded.set_at",
                )
                .bind(name)
                .bind(secret)
                .bind(stored)
                .bind(actor)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM plugin_secrets WHERE plugin_name = $1 AND name = $2")
                    .bind(name)
                    .bind(secret)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let action = if reference.is_some() {
            "set-secret"
        } else {
            "remove-secret"
        };
        audit(&mut tx, actor, name, action, json!({"secret": secret})).await?;
        bump(&mut tx).await?;
        tx.commit().await?;
        self.refresh().await?;
        self.describe(name).await
    }

    /// A plugin as stored: versions, the active one, order, configuration, grants, and what
    /// this host serves.
    pub async fn describe(&self, name: &str) -> Result<StoredPlugin, RegistryError> {
        let pool = self.inner.db.pool();
        let row = sqlx::query(
            "SELECT name, hook, active_version, previous_version, enabled, position, config, \
                    tripped_at, tripped_reason, updated_at \
             FROM plugins WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| RegistryError::UnknownPlugin(name.to_owned()))?;
        let versions = sqlx::query(
            "SELECT version, digest, size, source, uploaded_by, uploaded_at \
             FROM plugin_versions WHERE plugin_name = $1 ORDER BY uploaded_at, version",
        )
        .bind(name)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|v| -> Result<PluginVersion, sqlx::Error> {
            Ok(PluginVersion {
                digest: v.try_get("digest")?,
                size: v.try_get("size")?,
                source: v.try_get("source")?,
                uploaded_at: v.try_get("uploaded_at")?,
                uploaded_by: v.try_get("uploaded_by")?,
                version: v.try_get("version")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
        let grants: Vec<String> = sqlx::query(
            "SELECT capability FROM plugin_grants WHERE plugin_name = $1 ORDER BY capability",
        )
        .bind(name)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get("capability"))
        .collect::<Result<_, _>>()?;
        let secrets: Vec<String> =
            sqlx::query("SELECT name FROM plugin_secrets WHERE plugin_name = $1 ORDER BY name")
                .bind(name)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get("name"))
                .collect::<Result<_, _>>()?;
        let serving_here = self.snapshot().get(name).map(|p| ServedVersion {
            digest: p.digest().to_owned(),
            tripped: p.watch().is_some_and(|w| w.tripped()),
            version: p.manifest().version.to_string(),
        });
        Ok(StoredPlugin {
            active_version: row.try_get("active_version")?,
            config: serde_json::from_str(&row.try_get::<String, _>("config")?).ok(),
            enabled: row.try_get::<i64, _>("enabled")? == 1,
            grants,
            hook: row.try_get("hook")?,
            name: row.try_get("name")?,
            position: row.try_get("position")?,
            previous_version: row.try_get("previous_version")?,
            secrets,
            serving_here,
            tripped_at: row.try_get("tripped_at")?,
            tripped_reason: row.try_get("tripped_reason")?,
            updated_at: row.try_get("updated_at")?,
            versions,
        })
    }

    /// Every plugin, described.
    pub async fn list(&self) -> Result<PluginList, RegistryError> {
        let names: Vec<String> =
            sqlx::query("SELECT name FROM plugins ORDER BY hook, position, name")
                .fetch_all(self.inner.db.pool())
                .await?
                .iter()
                .map(|r| r.try_get("name"))
                .collect::<Result<_, _>>()?;
        let mut plugins = Vec::with_capacity(names.len());
        for name in names {
            plugins.push(self.describe(&name).await?);
        }
        Ok(PluginList {
            generation: self.snapshot().generation,
            plugins,
        })
    }

    /// The audit log, newest first; of one plugin when `name` is given.
    pub async fn audit_log(
        &self,
        name: Option<&str>,
        limit: i64,
    ) -> Result<AuditLog, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, plugin_name, action, detail FROM plugin_audit \
             WHERE ($1 = '' OR plugin_name = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(name.unwrap_or(""))
        .bind(limit.clamp(1, 1000))
        .fetch_all(self.inner.db.pool())
        .await?;
        let entries = rows
            .iter()
            .map(|r| -> Result<AuditEntry, sqlx::Error> {
                Ok(AuditEntry {
                    action: r.try_get("action")?,
                    actor: r.try_get("actor")?,
                    at: r.try_get("at")?,
                    detail: serde_json::from_str(&r.try_get::<String, _>("detail")?)
                        .unwrap_or(Value::Null),
                    id: r.try_get("id")?,
                    plugin: r.try_get("plugin_name")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AuditLog { entries })
    }

    /// The latest sampled calls of `name`, newest first.
    pub async fn call_log(&self, name: &str, limit: i64) -> Result<CallLog, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, version, at, input, output, error, duration_us FROM plugin_calls \
             WHERE plugin_name = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(limit.clamp(1, 200))
        .fetch_all(self.inner.db.pool())
        .await?;
        let parse = |text: Option<String>| {
            text.and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .unwrap_or(Value::Null)
        };
        let calls = rows
            .into_iter()
            .map(|r| -> Result<LoggedCall, sqlx::Error> {
                Ok(LoggedCall {
                    at: r.try_get("at")?,
                    duration_us: r.try_get("duration_us")?,
                    error: r.try_get("error")?,
                    id: r.try_get("id")?,
                    input: parse(r.try_get("input")?),
                    output: parse(r.try_get("output")?),
                    version: r.try_get("version")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CallLog { calls })
    }

    /// A stored version, loaded for a shadow run: configured like the active one, not watched
    /// (shadow calls are neither logged nor counted by the breaker).
    pub async fn load_candidate(&self, name: &str, version: &str) -> Result<Plugin, RegistryError> {
        load_stored(
            &self.inner.db,
            &self.inner.runtime,
            name,
            Some(version),
            &self.inner.config.secrets,
        )
        .await?
        .ok_or_else(|| self.unknown(name, version))
    }

    /// Writes sampled calls (in batches) and persists breaker trips, until the channel closes.
    async fn write_events(&self, mut receiver: mpsc::Receiver<WatchEvent>) {
        let mut batch = Vec::with_capacity(256);
        while receiver.recv_many(&mut batch, 256).await > 0 {
            let mut calls = Vec::new();
            for event in batch.drain(..) {
                match event {
                    WatchEvent::Call(record) => calls.push(record),
                    WatchEvent::Tripped {
                        plugin,
                        failures,
                        last_error,
                        epoch,
                    } => {
                        if let Err(e) = self.trip(&plugin, failures, &last_error, epoch).await {
                            tracing::error!(plugin = %plugin, "recording a breaker trip failed: {e}");
                        }
                    }
                }
            }
            if calls.is_empty() {
                continue;
            }
            if let Err(e) = self.write_calls(calls).await {
                tracing::warn!("call log write failed: {e}");
            }
            // The log is a sample: under load, one write a pace gathers what came meanwhile
            // instead of competing with checkouts for the writer call by call.
            tokio::time::sleep(CALL_LOG_PACE).await;
        }
    }

    /// Appends `calls` to the call log and trims each plugin's log to the newest
    /// `call_log_keep`, in one write transaction.
    async fn write_calls(
        &self,
        mut calls: Vec<crate::plugin::watch::CallRecord>,
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let keep = self.inner.config.call_log_keep;
        // What the trim would delete at once is not written.
        let mut names: Vec<String> = Vec::new();
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        calls.reverse();
        calls.retain(|call| {
            let count = seen.entry(call.plugin.name.clone()).or_default();
            *count += 1;
            *count <= keep
        });
        calls.reverse();
        for call in &calls {
            if !names.contains(&call.plugin.name) {
                names.push(call.plugin.name.clone());
            }
        }
        self.inner
            .db
            .write(move |tx| {
                Box::pin(async move {
                    for chunk in calls.chunks(CALL_LOG_ROWS_PER_STATEMENT) {
                        let sql = format!(
                            "INSERT INTO plugin_calls \
                               (plugin_name, version, hook, at, input, output, error, duration_us) \
                             VALUES {}",
                            crate::db::param_rows(1, chunk.len(), 8)
                        );
                        let mut values = Vec::with_capacity(chunk.len() * 8);
                        for call in chunk {
                            values.extend(args![
                                &call.plugin.name,
                                call.plugin.version.to_string(),
                                call.plugin.hook.as_str(),
                                now,
                                &call.input,
                                call.output.as_deref(),
                                call.error.as_deref(),
                                i64::try_from(call.duration.as_micros()).unwrap_or(i64::MAX)
                            ]);
                        }
                        tx.execute(&sql, &values).await?;
                    }
                    for name in &names {
                        tx.execute(
                            "DELETE FROM plugin_calls WHERE plugin_name = $1 AND id <= \
                               (SELECT id FROM plugin_calls WHERE plugin_name = $1 \
                                ORDER BY id DESC LIMIT 1 OFFSET $2)",
                            &args![name, keep],
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
    }

    /// Records a breaker trip for every host: the plugin stays installed and is served as
    /// failing (its hook's policy applies) until an operator enables it or activates a
    /// version.
    async fn trip(
        &self,
        plugin: &crate::plugin::PluginRef,
        failures: u32,
        last_error: &str,
        epoch: i64,
    ) -> Result<(), RegistryError> {
        let mut tx = self.inner.db.begin().await?;
        // Only if nobody changed the plugin since the watch was made: a trip queued before an
        // operator's enable must not switch it off again.
        let updated = sqlx::query(
            "UPDATE plugins SET tripped_at = $3, tripped_reason = $4, updated_at = $3 \
             WHERE name = $1 AND active_version = $2 AND tripped_at IS NULL \
               AND updated_at = $5",
        )
        .bind(&plugin.name)
        .bind(plugin.version.to_string())
        .bind(now_ms())
        .bind(last_error)
        .bind(epoch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated > 0 {
            audit(
                &mut tx,
                "crash-loop breaker",
                &plugin.name,
                "trip",
                json!({"version": plugin.version.to_string(), "failures": failures, "last_error": last_error}),
            )
            .await?;
            bump(&mut tx).await?;
        }
        tx.commit().await?;
        self.refresh().await?;
        Ok(())
    }
}

/// Loads version `version` of `name` from the registry (its active version when `version` is
/// none), with the operator's configuration and without a watch; none when there is no such
/// version. For shadow runs, here and in `cartridge plugin run --replay`.
pub async fn load_stored(
    db: &Db,
    runtime: &Arc<Runtime>,
    name: &str,
    version: Option<&str>,
    policy: &SecretPolicy,
) -> Result<Option<Plugin>, RegistryError> {
    let row = sqlx::query(
        "SELECT v.manifest, v.component, p.config FROM plugins p \
         JOIN plugin_versions v ON v.plugin_name = p.name \
         WHERE p.name = $1 AND v.version = COALESCE($2, p.active_version)",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(db.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let manifest =
        Manifest::parse(&row.try_get::<String, _>("manifest")?).map_err(LoadError::from)?;
    let component: Vec<u8> = row.try_get("component")?;
    let config: BTreeMap<String, String> =
        serde_json::from_str(&row.try_get::<String, _>("config")?)
            .map_err(|e| RegistryError::Invalid(format!("stored config: {e}")))?;
    let runtime = runtime.clone();
    let plugin = tokio::task::spawn_blocking(move || runtime.load(manifest, &component))
        .await
        .map_err(|e| RegistryError::Invalid(format!("loading was interrupted: {e}")))??;
    let (granted, secrets) = grants_of(db, name, policy).await?;
    Ok(Some(
        plugin.with_config(&config).with_grants(&granted, secrets),
    ))
}

/// The capabilities an operator granted `name`, and its secret references that `policy`
/// allows (a stored reference the policy no longer allows is dropped, with a warning).
async fn grants_of(
    db: &Db,
    name: &str,
    policy: &SecretPolicy,
) -> Result<(Vec<Capability>, BTreeMap<String, SecretRef>), RegistryError> {
    let granted = sqlx::query(
        "SELECT capability FROM plugin_grants WHERE plugin_name = $1 ORDER BY capability",
    )
    .bind(name)
    .fetch_all(db.pool())
    .await?
    .iter()
    .filter_map(|r| {
        r.try_get::<String, _>("capability")
            .ok()
            .and_then(|c| Capability::parse(&c).ok())
    })
    .collect();
    let mut secrets = BTreeMap::new();
    for row in sqlx::query("SELECT name, reference FROM plugin_secrets WHERE plugin_name = $1")
        .bind(name)
        .fetch_all(db.pool())
        .await?
    {
        let reference: String = row.try_get("reference")?;
        let secret: String = row.try_get("name")?;
        match serde_json::from_str::<SecretRef>(&reference) {
            Ok(reference) => match policy.check(&reference) {
                Ok(()) => {
                    secrets.insert(secret, reference);
                }
                Err(why) => {
                    tracing::warn!(plugin = name, secret, "secret reference not allowed: {why}");
                }
            },
            Err(e) => tracing::warn!(plugin = name, secret, "unreadable secret reference: {e}"),
        }
    }
    Ok((granted, secrets))
}

async fn audit(
    tx: &mut crate::db::WriteTx,
    actor: &str,
    plugin: &str,
    action: &str,
    detail: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO plugin_audit (at, actor, plugin_name, action, detail) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now_ms())
    .bind(actor)
    .bind(plugin)
    .bind(action)
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The PostgreSQL channel on which registry changes are announced.
const CHANNEL: &str = "cartridge_registry";

/// Moves the generation on. On PostgreSQL the change is also announced on [`CHANNEL`] (sent at
/// commit, dropped on rollback), so hosts need not wait for their next poll.
async fn bump(tx: &mut crate::db::WriteTx) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE registry_state SET generation = generation + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    if matches!(tx.backend_name(), "PostgreSQL") {
        sqlx::query(&format!("NOTIFY {CHANNEL}"))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// A sample input per hook for the smoke call every upload must pass.
fn smoke_input(hook: HookKind) -> Value {
    let money = |amount: i64| json!({"amount": amount, "currency": "EUR"});
    let now = 1_764_000_000_000_i64;
    match hook {
        HookKind::Pricing => json!({
            "id": "smoke-cart", "currency": "EUR",
            "lines": [
                {"id": "l1", "product_id": "smoke-tee", "sku": "SMOKE-TEE", "variant_attributes": [],
                 "categories": ["apparel"], "quantity": 3, "unit_price": money(1999)},
                {"id": "l2", "product_id": "smoke-mug", "sku": "SMOKE-MUG", "variant_attributes": [],
                 "categories": ["home"], "quantity": 1, "unit_price": money(899)}
            ],
            "customer": null, "coupon_codes": [], "shipping": null, "now": now
        }),
        HookKind::Fraud => json!({
            "id": "smoke-checkout", "currency": "EUR",
            "subtotal": money(6896), "discount_total": money(0), "shipping_total": money(0),
            "total": money(6896),
            "lines": [{"sku": "SMOKE-TEE", "product_id": "smoke-tee", "quantity": 3,
                       "total": money(5997), "categories": ["apparel"]}],
            "customer": {"id": null, "email": "smoke@example.com", "tags": [],
                         "history": {"order_count": 0, "orders_last_24h": 0, "failed_payments_last_24h": 0,
                                     "lifetime_spend": money(0), "chargebacks": 0, "first_seen": null}},
            "billing_address": null, "shipping_address": null, "client_ip": null,
            "payment": {"kind": "card", "brand": null, "last4": null, "issuer_country": null,
                        "fingerprint": null, "metadata": []},
            "now": now
        }),
        HookKind::Personalization => json!({
            "customer_id": null, "customer_tags": [], "purchases": [], "cart_skus": [],
            "candidates": [
                {"sku": "SMOKE-TEE", "product_id": "smoke-tee", "title": "Tee", "categories": ["apparel"],
                 "price": money(1999), "attributes": []},
                {"sku": "SMOKE-MUG", "product_id": "smoke-mug", "title": "Mug", "categories": ["home"],
                 "price": money(899), "attributes": []}
            ],
            "limit": 2, "now": now
        }),
        // The only payment call without side effects: a webhook it must refuse or decode.
        HookKind::Payment => json!({
            "step": "parse_webhook",
            "request": {"headers": [], "body": [], "now": now}
        }),
    }
}

/// Calls `plugin` once on its hook's sample input. It must answer — with a decision or with an
/// error of its own — within its limits.
async fn smoke(plugin: &Plugin) -> Result<(), RegistryError> {
    match crate::hooks::invoke(plugin, smoke_input(plugin.hook())).await {
        Ok(_) => Ok(()),
        Err(crate::hooks::InvokeError::Hook(e)) if !e.kind.is_crash() => Ok(()),
        Err(e) => Err(RegistryError::Rejected {
            code: "smoke_failed",
            message: format!("the smoke call failed: {e}"),
        }),
    }
}
