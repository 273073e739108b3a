//! The engine: one wasmtime `Engine` for the process, the epoch ticker, the compiled-artifact
//! cache, and loading a component into a ready-to-call [`Plugin`].
//!
//! Loading does all the slow work once, off the request path: compile (or deserialize our own
//! cached artifact), check that the component exports the hook its manifest claims and imports
//! nothing we do not grant, and pre-link it into an `InstancePre`. A call then only creates a
//! store and instantiates from the pooling allocator.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::call::{HookPre, Plugin};
use super::error::LoadError;
use super::manifest::{HookKind, MAX_MEMORY_MIB, Manifest};
use super::sandbox::{self, StoreState};
use super::warm::IdleBudget;

/// Instance slots of a server's pool unless `--max-instances` says otherwise.
pub const DEFAULT_MAX_INSTANCES: u32 = 512;

/// How the engine is set up. The defaults suit a server; tests and the CLI use them too.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are cached; none compiles every load.
    pub cache_dir: Option<PathBuf>,
    /// How many plugin calls may run at once, across all plugins, each on an instance of its
    /// own; up to 64 more instances may wait idle between calls (`reuse_instances`). Each
    /// slot reserves address space (not memory) for a full-size linear memory.
    pub max_instances: u32,
    /// Count instructions (wasmtime fuel), so that manifests can set an instruction budget and
    /// calls report what they used. Costs some speed per call.
    pub consume_fuel: bool,
    /// The epoch tick: deadlines are checked this often.
    pub epoch_tick: Duration,
    /// Keep a plugin's instance after a call that answered, for its next call (see
    /// `plugin::warm` for when one is not kept); off, every call gets a new instance.
    pub reuse_instances: bool,
    /// Serve plugins whose source is compiled into this binary (the `native-rules` build) by
    /// that native code instead of their components: the checkout benchmark's comparison.
    pub native_rules: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: DEFAULT_MAX_INSTANCES,
            consume_fuel: true,
            epoch_tick: Duration::from_millis(1),
            reuse_instances: true,
            native_rules: false,
        }
    }
}

/// The plugin runtime. Cheap to share behind an `Arc`; dropping it stops the epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    config: RuntimeConfig,
    engine_hash: String,
    /// Shared with every plugin loaded here: the ticker runs as long as anything can still
    /// call into the engine, and stops when the last of them is dropped.
    ticker: Arc<EpochTicker>,
    /// The pool's instance slots, as calls wait their turn for them.
    slots: Arc<InstanceSlots>,
    /// The extra slots idle instances may hold between calls.
    idle: Arc<IdleBudget>,
}

impl Runtime {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let idle = Arc::new(IdleBudget::new(idle_slots(&config)));
        let engine = Engine::new(&engine_config(&config, idle.max()))?;
        let linker = sandbox::linker(&engine)?;
        let engine_hash = {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        let ticker = Arc::new(EpochTicker::start(engine.clone(), config.epoch_tick)?);
        let slots = Arc::new(InstanceSlots::new(config.max_instances));
        Ok(Self {
            engine,
            linker,
            config,
            engine_hash,
            ticker,
            slots,
            idle,
        })
    }

    /// The engine's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Instance slots no call holds at this moment.
    pub fn free_instance_slots(&self) -> usize {
        self.slots.free()
    }

    /// Instances kept between calls at this moment, across all plugins.
    pub fn idle_instances(&self) -> usize {
        self.idle.used()
    }

    /// Loads a plugin from a directory holding `plugin.toml` and one `.wasm` file (or the
    /// `.wasm` named by the manifest's name).
    pub fn load_dir(&self, dir: &Path) -> Result<Plugin, LoadError> {
        let manifest_path = dir.join("plugin.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| LoadError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text)?;
        let wasm_path = component_path(dir, &manifest)?;
        let wasm = std::fs::read(&wasm_path).map_err(|source| LoadError::Io {
            path: wasm_path,
            source,
        })?;
        self.load(manifest, &wasm)
    }

    /// Loads a plugin from its manifest and component bytes.
    pub fn load(&self, manifest: Manifest, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let digest = hex::encode(Sha256::digest(wasm));
        manifest.check_component(&digest)?;
        let component = self.compile(&digest, wasm)?;
        check_exports(&self.engine, &component, &manifest)?;
        check_capability_imports(&self.engine, &component, &manifest)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            // The only way pre-instantiation fails for a valid component is an import the
            // linker does not define: something we do not grant.
            LoadError::CapabilityDenied(format!("{e:#}"))
        })?;
        let pre = match manifest.hook {
            HookKind::Pricing => HookPre::Pricing(
                bindings::pricing::PricingPluginPre::new(instance_pre).map_err(wrong(&manifest))?,
            ),
            HookKind::Fraud => HookPre::Fraud(
                bindings::fraud::FraudPluginPre::new(instance_pre).map_err(wrong(&manifest))?,
            ),
            HookKind::Personalization => HookPre::Personalization(
                bindings::personalization::PersonalizationPluginPre::new(instance_pre)
                    .map_err(wrong(&manifest))?,
            ),
            HookKind::Payment => HookPre::Payment(
                super::call::PaymentPre::new(instance_pre).map_err(wrong(&manifest))?,
            ),
        };
        let plugin = Plugin::new(
            manifest,
            digest,
            wasm.len(),
            pre,
            Shared {
                consume_fuel: self.config.consume_fuel,
                ticker: self.ticker.clone(),
                slots: self.slots.clone(),
                idle: self.idle.clone(),
            },
        );
        #[cfg(feature = "native-rules")]
        if self.config.native_rules {
            return Ok(plugin.compiled_natively());
        }
        Ok(plugin)
    }

    /// Compiles a component, through the artifact cache when there is one. Only artifacts this
    /// process family wrote are ever deserialized: they are keyed by the component's digest
    /// and the engine's compatibility hash, and live in a directory the host owns.
    fn compile(&self, digest: &str, wasm: &[u8]) -> Result<Component, LoadError> {
        let Some(dir) = &self.config.cache_dir else {
            return Component::new(&self.engine, wasm).map_err(compile_error);
        };
        let path = dir.join(format!("{digest}-{}.cwasm", self.engine_hash));
        if path.is_file() {
            match self.deserialize(&path) {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "discarding unusable cached artifact: {e:#}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let artifact = self
            .engine
            .precompile_component(wasm)
            .map_err(compile_error)?;
        if let Err(e) = write_atomically(dir, &path, &artifact) {
            tracing::warn!(path = %path.display(), "cannot cache compiled artifact: {e:#}");
        }
        self.deserialize_bytes(&artifact)
            .or_else(|_| Component::new(&self.engine, wasm).map_err(compile_error))
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, path: &Path) -> wasmtime::Result<Component> {
        // SAFETY: the file is an artifact this host wrote with `precompile_component` into its
        // own cache directory, named by the digest of its source and the engine's
        // compatibility hash; wasmtime additionally checks that it was compiled for this
        // engine's configuration. Nothing from outside the host is ever passed here.
        unsafe { Component::deserialize_file(&self.engine, path) }
    }

    #[allow(unsafe_code)]
    fn deserialize_bytes(&self, artifact: &[u8]) -> Result<Component, LoadError> {
        // SAFETY: `artifact` was produced by `precompile_component` on this very engine a
        // moment ago.
        unsafe { Component::deserialize(&self.engine, artifact) }.map_err(compile_error)
    }
}

/// Slots for idle instances: as many as calls may run at once, up to the host-wide cap; none
/// when reuse is off.
fn idle_slots(config: &RuntimeConfig) -> usize {
    if config.reuse_instances {
        (config.max_instances as usize).min(super::warm::IDLE_PER_HOST)
    } else {
        0
    }
}

/// The engine, with a pool of `max_instances` slots for running calls and `idle` more for
/// instances kept between calls.
fn engine_config(config: &RuntimeConfig, idle: usize) -> Config {
    let instances = config
        .max_instances
        .saturating_add(u32::try_from(idle).unwrap_or(u32::MAX));
    let mut pooling = PoolingAllocationConfig::default();
    let max_memory = usize::try_from(u64::from(MAX_MEMORY_MIB) * 1024 * 1024).unwrap_or(usize::MAX);
    pooling
        .total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(4))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        // A store keeps the fiber stack of its last call until it is dropped, so an idle
        // instance holds one as well.
        .total_stacks(instances)
        .max_memory_size(max_memory)
        .max_memories_per_component(2)
        .max_tables_per_component(4)
        .max_core_instances_per_component(20)
        // Reset small memories and tables with memset instead of madvise: cheaper per call
        // for plugins that touch little memory.
        //
        // That memset is ~5 % of the server's CPU under checkout load. `pagemap_scan` would
        // reset only the pages a call dirtied, but in wasmtime 48 it skips dirty pages that are
        // not present (swapped out, for one), which would then reach the next instance in
        // the slot unreset: one call's data in another's memory. Off until that is fixed
        // upstream (wasmtime PR 14357).
        .linear_memory_keep_resident(256 * 1024)
        .table_keep_resident(16 * 1024)
        .async_stack_keep_resident(64 * 1024);

    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(config.consume_fuel)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling))
        // Plugins cannot use concurrent component-model async; turning it off makes each
        // instantiation and call cheaper.
        .concurrency_support(false)
        .max_wasm_stack(512 * 1024)
        .async_stack_size(1024 * 1024);
    cfg
}

fn compile_error(e: wasmtime::Error) -> LoadError {
    LoadError::Compile(format!("{e:#}"))
}

fn wrong(manifest: &Manifest) -> impl Fn(wasmtime::Error) -> LoadError + '_ {
    move |e| LoadError::WrongExport {
        hook: manifest.hook,
        contract: manifest.contract.clone(),
        reason: format!("{e:#}"),
    }
}

/// The component must export the manifest's hook interface at the manifest's contract version.
fn check_exports(
    engine: &Engine,
    component: &Component,
    manifest: &Manifest,
) -> Result<(), LoadError> {
    let wanted = format!("{}@{}", manifest.hook.export_interface(), manifest.contract);
    let ty = component.component_type();
    let mut exported = Vec::new();
    for (name, item) in ty.exports(engine) {
        if name == wanted && matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            return Ok(());
        }
        exported.push(name.to_owned());
    }
    Err(LoadError::WrongExport {
        hook: manifest.hook,
        contract: manifest.contract.clone(),
        reason: format!(
            "expected an export named {wanted}, found [{}]",
            exported.join(", ")
        ),
    })
}

/// A component that imports a capability its manifest does not ask for is refused at load, so
/// that what a plugin can reach is always written in its manifest.
fn check_capability_imports(
    engine: &Engine,
    component: &Component,
    manifest: &Manifest,
) -> Result<(), LoadError> {
    let requested = super::capability::Grants::new(manifest.requested_capabilities());
    for (name, _) in component.component_type().imports(engine) {
        let Some(interface) = name.strip_prefix("cartridge:capabilities/") else {
            continue;
        };
        let asked = if interface.starts_with("http@") {
            requested.any_http()
        } else if interface.starts_with("secrets@") {
            requested.secrets_allowed()
        } else {
            false
        };
        if !asked {
            return Err(LoadError::CapabilityDenied(format!(
                "{name}, which the manifest's `capabilities` does not ask for"
            )));
        }
    }
    Ok(())
}

/// The component file in a plugin directory: `<name>.wasm`, `<name with underscores>.wasm`,
/// or the only `.wasm` there is.
pub fn component_path(dir: &Path, manifest: &Manifest) -> Result<PathBuf, LoadError> {
    for candidate in [
        format!("{}.wasm", manifest.name),
        format!("{}.wasm", manifest.name.replace('-', "_")),
        "plugin.wasm".to_owned(),
    ] {
        let path = dir.join(candidate);
        if path.is_file() {
            return Ok(path);
        }
    }
    let io = |source| LoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let wasm: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    match wasm.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "expected exactly one .wasm beside plugin.toml (or {}.wasm), found {}",
                manifest.name,
                wasm.len()
            ),
        ))),
    }
}

/// Writes `bytes` to `path` (in `dir`) under a temporary name, synced, then renamed into
/// place: a reader sees the old file or the whole new one.
pub(crate) fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// What every plugin a runtime loads shares with it.
pub(crate) struct Shared {
    /// Whether the engine counts fuel.
    pub(crate) consume_fuel: bool,
    /// Keeps the epoch ticker running while the plugin can be called.
    pub(crate) ticker: Arc<EpochTicker>,
    /// The pool's slots for running calls.
    pub(crate) slots: Arc<InstanceSlots>,
    /// The pool's slots for idle instances.
    pub(crate) idle: Arc<IdleBudget>,
}

/// The pooling allocator's instance slots, handed out in turn. The pool itself refuses an
/// instance at once when every slot is taken; a burst of checkouts beyond the slots then failed
/// its fail-closed hooks with 502 while the calls holding the slots were microseconds from
/// done. A call instead waits here for a slot, in order, for no longer than its own deadline
/// (see `Plugin::instance`), and holds it until its store is dropped or kept idle, so the
/// pool has a free slot for every call that got one.
pub(crate) struct InstanceSlots {
    free: Arc<tokio::sync::Semaphore>,
    total: u32,
}

/// A call's claim on one instance slot, given back when dropped.
pub(crate) struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl InstanceSlots {
    fn new(total: u32) -> Self {
        Self {
            free: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// A slot, waiting until `deadline` at the latest; `None` when none came free in time.
    /// A wait is counted in the metrics: calls waiting for slots mean the pool is too small
    /// for the load (`--max-instances`).
    pub(crate) async fn take(&self, deadline: tokio::time::Instant) -> Option<Slot> {
        if let Ok(permit) = self.free.clone().try_acquire_owned() {
            return Some(Slot(permit));
        }
        let started = std::time::Instant::now();
        let permit = tokio::time::timeout_at(deadline, self.free.clone().acquire_owned()).await;
        super::metrics::record_slot_wait(started.elapsed());
        // The semaphore is never closed: an error here is only the deadline.
        permit.ok()?.ok().map(Slot)
    }

    /// How many there are.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// How many no call holds.
    fn free(&self) -> usize {
        self.free.available_permits()
    }
}

/// Advances the engine's epoch on its own OS thread. A tokio task would be starved exactly
/// when it matters: under load, with every worker busy running plugins. Without ticks no
/// deadline would ever fire, so the runtime and every plugin hold it, and it stops only when
/// the last of them is dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("cartridge-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
