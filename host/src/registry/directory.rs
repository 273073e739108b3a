//! The watched plugins directory: one sub-directory per plugin holding `plugin.toml` and its
//! component. Dropping or replacing a bundle installs and activates it; removing one disables
//! the plugin it installed. It goes through the same validation as the admin API.
//!
//! Changes are picked up by a filesystem watcher (notify), debounced, plus a slow rescan in case
//! an event was missed. A bundle is read only once its files have stopped changing between two
//! looks; a half-written component that slips through fails validation and is refused (and
//! retried when it changes again), so it never replaces a working version. Versions are
//! immutable: replacing a component without bumping the manifest's version is refused with
//! `version_exists`.
//!
//! A bundle whose manifest changed while its component did not, and does not name its
//! component's digest (`component-sha256`, which `cartridge plugin build` writes), waits
//! [`MANIFEST_ALONE`] before it is read: an operator copying the manifest first and the
//! component a moment later would otherwise have the new version stored and activated with
//! the old component, and the real one refused as `version_exists` when it arrived. A change
//! of the manifest alone (new configuration under a new version) still goes live, that much
//! later. A manifest that names its component's digest needs no wait: beside another
//! component it is refused, and read again when the files change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::{Registry, RegistryError};

/// Who the audit log names for changes made through the directory.
pub const ACTOR: &str = "plugins-directory";

/// How long the directory must stay quiet after a change before it is read. Copying a bundle
/// is a burst of writes; a half-written file that slips through is refused and read again.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// How long a bundle whose manifest changed alone must stay as it is before it is read (see
/// the module's documentation).
pub const MANIFEST_ALONE: Duration = Duration::from_secs(2);

/// What one bundle looked like at the last scan.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: Option<String>,
    fingerprint: String,
    /// Its files as they were read.
    shape: Shape,
}

/// A bundle whose manifest changed alone, held back until it has stayed so for
/// [`MANIFEST_ALONE`].
#[derive(Debug)]
struct Held {
    fingerprint: String,
    since: Instant,
}

/// What a scan did, for logs and tests.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// `name@version` of versions activated.
    pub activated: Vec<String>,
    /// Bundles refused, with the reason code and message.
    pub refused: Vec<(PathBuf, &'static str, String)>,
    /// Plugins disabled because their bundle went away.
    pub disabled: Vec<String>,
    /// Bundles whose manifest changed alone, held back until this instant.
    pub held: Vec<(PathBuf, Instant)>,
}

/// The plugins directory of one host.
#[derive(Debug)]
pub struct PluginsDirectory {
    dir: PathBuf,
    registry: Registry,
    seen: BTreeMap<PathBuf, Seen>,
    held: BTreeMap<PathBuf, Held>,
    manifest_alone: Duration,
    first_scan: bool,
}

impl PluginsDirectory {
    /// The directory `dir`, feeding `registry`. Nothing is read until [`Self::scan`].
    pub fn new(dir: PathBuf, registry: Registry) -> Self {
        Self {
            dir,
            registry,
            seen: BTreeMap::new(),
            held: BTreeMap::new(),
            manifest_alone: MANIFEST_ALONE,
            first_scan: true,
        }
    }

    /// Holds a bundle whose manifest changed alone for `wait` instead of [`MANIFEST_ALONE`].
    pub fn with_manifest_alone(mut self, wait: Duration) -> Self {
        self.manifest_alone = wait;
        self
    }

    /// Installs what changed since the last scan. On the first scan (start-up), a bundle whose
    /// version is already stored is left alone, so that an operator's rollback through the API
    /// survives a restart; afterwards, a bundle that changed is activated even if its version
    /// was stored before (putting the old files back means "run this").
    pub async fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let Some(bundles) = bundles(&self.dir) else {
            // Unreadable is not empty: never disable everything over a transient error.
            tracing::warn!(dir = %self.dir.display(), "cannot read the plugins directory; nothing changed");
            return report;
        };
        for path in &bundles {
            let Some((fingerprint, shape)) = stable_fingerprint(path).await else {
                continue; // still being written; the next event or rescan will come back
            };
            let seen = self.seen.get(path);
            if seen.is_some_and(|s| s.fingerprint == fingerprint) {
                self.held.remove(path);
                continue;
            }
            if seen.is_some_and(|s| manifest_changed_alone(&s.shape, &shape))
                && !pins_its_component(path)
            {
                let now = Instant::now();
                let held = self.held.entry(path.clone()).or_insert_with(|| Held {
                    fingerprint: fingerprint.clone(),
                    since: now,
                });
                if held.fingerprint != fingerprint {
                    *held = Held {
                        fingerprint: fingerprint.clone(),
                        since: now,
                    };
                }
                let until = held.since + self.manifest_alone;
                if now < until {
                    report.held.push((path.clone(), until));
                    continue;
                }
            }
            self.held.remove(path);
            let name = match self.install(path, &mut report).await {
                Ok(name) => Some(name),
                Err((code, message)) => {
                    tracing::warn!(bundle = %path.display(), code, "plugin bundle refused: {message}");
                    report.refused.push((path.clone(), code, message));
                    // Remember the refused files: no retry (and no log line) until they change.
                    self.seen.get(path).and_then(|s| s.name.clone())
                }
            };
            self.seen.insert(
                path.clone(),
                Seen {
                    name,
                    fingerprint,
                    shape,
                },
            );
        }
        self.held.retain(|path, _| bundles.contains(path));
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !bundles.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(Seen {
                name: Some(name), ..
            }) = self.seen.remove(&path)
            {
                match self.registry.disable_directory_plugin(&name).await {
                    Ok(true) => report.disabled.push(name),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(plugin = %name, "disabling a removed bundle failed: {e}")
                    }
                }
            }
        }
        self.first_scan = false;
        report
    }

    async fn install(
        &self,
        path: &Path,
        report: &mut ScanReport,
    ) -> Result<String, (&'static str, String)> {
        let manifest_path = path.join("plugin.toml");
        let manifest = std::fs::read_to_string(&manifest_path)
            .map_err(|e| ("io_error", format!("{}: {e}", manifest_path.display())))?;
        let parsed = crate::plugin::Manifest::parse(&manifest)
            .map_err(|e| ("invalid_manifest", e.to_string()))?;
        let wasm_path =
            crate::plugin::component_path(path, &parsed).map_err(|e| (e.code(), e.to_string()))?;
        let wasm = std::fs::read(&wasm_path)
            .map_err(|e| ("io_error", format!("{}: {e}", wasm_path.display())))?;
        let refused = |e: RegistryError| (e.code(), e.to_string());
        let stored = self
            .registry
            .upload(ACTOR, "directory", &manifest, wasm)
            .await
            .map_err(refused)?;
        let (active, enabled) = self
            .registry
            .serving_state(&stored.name)
            .await
            .map_err(refused)?;
        let wanted = !self.first_scan || stored.created || active.is_none();
        if wanted && (active.as_deref() != Some(stored.version.as_str()) || !enabled) {
            self.registry
                .activate(ACTOR, &stored.name, &stored.version)
                .await
                .map_err(refused)?;
            report
                .activated
                .push(format!("{}@{}", stored.name, stored.version));
        }
        Ok(stored.name)
    }

    /// Watches the directory until the task is aborted: scans after changes settle, and every
    /// `rescan` in case the watcher missed something.
    pub async fn watch(mut self, debounce: Duration, rescan: Duration) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = {
            use notify::Watcher as _;
            let tx = tx.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = tx.try_send(());
                }
            })
            .and_then(|mut w| {
                w.watch(&self.dir, notify::RecursiveMode::Recursive)?;
                Ok(w)
            })
        };
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot watch the plugins directory ({e}); rescanning every {rescan:?}");
                None
            }
        };
        // When a held bundle is to be read again, if one is.
        let mut next_look: Option<Instant> = None;
        loop {
            let wait = next_look.map_or(rescan, |at| {
                rescan.min(at.saturating_duration_since(Instant::now()))
            });
            let changed = tokio::time::timeout(wait, rx.recv()).await.is_ok();
            if changed {
                // Let a burst of writes settle.
                while tokio::time::timeout(debounce, rx.recv()).await.is_ok() {}
            }
            let report = self.scan().await;
            if !report.activated.is_empty() || !report.disabled.is_empty() {
                tracing::info!(activated = ?report.activated, disabled = ?report.disabled, "plugins directory applied");
            }
            for (bundle, _) in &report.held {
                tracing::info!(bundle = %bundle.display(), "the manifest changed but not the component: waiting {:?} for the component", self.manifest_alone);
            }
            next_look = report.held.iter().map(|(_, until)| *until).min();
        }
    }
}

/// The bundle directories in `dir`: those holding a `plugin.toml`; none if `dir` cannot be
/// read.
fn bundles(dir: &Path) -> Option<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return None;
    };
    let mut bundles: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("plugin.toml").is_file())
        .collect();
    bundles.sort();
    Some(bundles)
}

/// Whether the bundle's manifest names its component's digest (`component-sha256`): then
/// the wrong component is refused anyway, and there is nothing to wait for.
fn pins_its_component(bundle: &Path) -> bool {
    std::fs::read_to_string(bundle.join("plugin.toml"))
        .ok()
        .and_then(|text| crate::plugin::Manifest::parse(&text).ok())
        .is_some_and(|m| m.component_sha256.is_some())
}

/// Whether, of a bundle's files, only `plugin.toml` is not as it was.
fn manifest_changed_alone(before: &Shape, now: &Shape) -> bool {
    let others = |shape: &Shape| -> Shape {
        shape
            .iter()
            .filter(|(path, _, _)| path.file_name().is_none_or(|n| n != "plugin.toml"))
            .cloned()
            .collect()
    };
    let (before_others, now_others) = (others(before), others(now));
    !now_others.is_empty() && before_others == now_others
}

/// A digest of the bundle's files (names, sizes, contents) and their shape, or none while they
/// still change.
async fn stable_fingerprint(bundle: &Path) -> Option<(String, Shape)> {
    let first = shape(bundle)?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = shape(bundle)?;
    if first != second {
        return None;
    }
    let mut hasher = Sha256::new();
    for (path, _, _) in &second {
        hasher.update(path.to_string_lossy().as_bytes());
        hasher.update(std::fs::read(path).ok()?);
    }
    Some((hex::encode(hasher.finalize()), second))
}

type Shape = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn shape(bundle: &Path) -> Option<Shape> {
    let mut files: Shape = std::fs::read_dir(bundle)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.path(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    Some(files)
}
