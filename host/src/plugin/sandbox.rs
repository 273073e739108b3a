//! What a plugin's instance can reach: the per-call store state and the linker.
//!
//! A plugin gets WASI so that Rust's standard library works (allocation, panics, formatting),
//! but a WASI with nothing behind it: no preopened directories, no environment, no arguments,
//! no sockets, a clock frozen at the epoch (time arrives in the input), a fixed seed for hash
//! maps, and standard output and error captured into small buffers. The functions that would
//! open a door (`get-directories`, `get-environment`, creating a socket, resolving a name) are
//! replaced by ones that stop the call with `capability_denied`, so an attempt is reported
//! rather than quietly failing inside the plugin.
//!
//! The only other imports are the `host` interface of the contract: bounded logging and the
//! plugin's configuration values.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView};

use super::bindings::host::{self, LogLevel};
use super::error::{CapabilityDenied, MemoryLimitExceeded};

/// The most a call may log, all lines together.
pub const LOG_CAP_BYTES: usize = 4 * 1024;
/// How much of standard error is kept to explain a trap (a panic message).
const STDERR_CAP_BYTES: usize = 4 * 1024;
/// Tables are tiny in plugins; this only stops a runaway `table.grow`.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLine {
    /// Its level.
    pub level: &'static str,
    /// Its text.
    pub message: String,
}

/// Per-call state: everything a store holds besides the instance.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    stderr: MemoryOutputPipe,
    config: Arc<BTreeMap<String, String>>,
    memory_limit: u64,
    pub(crate) peak_memory: u64,
    pub(crate) logs: Vec<LogLine>,
    log_bytes: usize,
    pub(crate) logs_dropped: u32,
    /// The plugin's `name@version`, for the host's own log lines.
    plugin_id: Arc<str>,
}

impl StoreState {
    pub(crate) fn new(
        plugin_id: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        memory_limit: u64,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAP_BYTES);
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .stdout(MemoryOutputPipe::new(STDERR_CAP_BYTES))
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .insecure_random_seed(0x0c47_7121_d9e5_0000)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            stderr,
            config,
            memory_limit,
            peak_memory: 0,
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            plugin_id,
        }
    }

    /// What the guest wrote to standard error, e.g. a panic message.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_owned()
    }
}

impl wasmtime_wasi::WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.memory_limit {
            return Err(MemoryLimitExceeded {
                limit: self.memory_limit,
                requested: desired,
            }
            .into());
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl host::Host for StoreState {
    fn log(&mut self, level: LogLevel, message: String) {
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        if self.log_bytes + message.len() > LOG_CAP_BYTES {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        self.log_bytes += message.len();
        tracing::debug!(plugin = %self.plugin_id, level, "{message}");
        self.logs.push(LogLine { level, message });
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

impl super::bindings::types::Host for StoreState {}

/// Clocks that always read zero: plugins have no clock; the request's time is in the input.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The WASI functions that would give a plugin access to the world outside its input, and the
/// capability each one stands for.
const DOORS: &[(&str, &[&str], &str)] = &[
    (
        "wasi:filesystem/preopens",
        &["get-directories"],
        "filesystem",
    ),
    (
        "wasi:cli/environment",
        &["get-environment", "get-arguments", "initial-cwd"],
        "environment",
    ),
    (
        "wasi:sockets/tcp-create-socket",
        &["create-tcp-socket"],
        "network",
    ),
    (
        "wasi:sockets/udp-create-socket",
        &["create-udp-socket"],
        "network",
    ),
    (
        "wasi:sockets/instance-network",
        &["instance-network"],
        "network",
    ),
    (
        "wasi:sockets/ip-name-lookup",
        &["resolve-addresses"],
        "network",
    ),
];

/// The WASI version wasmtime-wasi implements; guests built against any 0.2.x resolve to it.
const WASI_VERSION: &str = "0.2.12";

/// Builds the linker every plugin is instantiated against.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    linker.allow_shadowing(true);
    for (interface, functions, capability) in DOORS {
        let mut instance = linker.instance(&format!("{interface}@{WASI_VERSION}"))?;
        for function in *functions {
            let what = format!("{capability} ({interface}#{function})");
            instance.func_new(function, move |_store, _ty, _params, _results| {
                Err(CapabilityDenied(what.clone()).into())
            })?;
        }
    }
    linker.allow_shadowing(false);
    super::bindings::host::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
        &mut linker,
        |state| state,
    )?;
    Ok(linker)
}
