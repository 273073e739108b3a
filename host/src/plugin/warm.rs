//! Live instances kept between calls of one plugin.
//!
//! Instantiating a component and resetting its memory afterwards cost several times what the
//! call itself does (BENCHMARKS.md, issue 3), so a call that ended well hands its instance back
//! here and the plugin's next call takes it instead of instantiating. An instance is only ever
//! entered by one call at a time, and only by calls of the plugin version, configuration and
//! grants it was instantiated for: a new version, new configuration or new grants is a new
//! [`Plugin`](super::Plugin) with a pool of its own.
//!
//! What an instance keeps between calls is its linear memory (the guest's heap and statics),
//! nothing of the host's: the store's per-call state (deadline, fuel, log) is set afresh for
//! every call. It goes back to the pool only when nothing about the call asks for a clean
//! slate (see [`Reuse`]): a trap, a deadline, an exhausted budget, a refused answer or a
//! cancelled call drops it; so does any call that reached for WASI or read a secret, or that
//! left the memory above [`POOLED_MEMORY_CAP`]; and every instance is retired after
//! [`CALLS_PER_INSTANCE`] calls.
//! A plugin whose author wants every call on a fresh instance says `reuse-instances = false`
//! in its manifest; an operator can turn reuse off for the whole host (`--fresh-instances`).
//!
//! Idle instances hold pooling-allocator slots of their own — an instance, its memories and
//! tables, and the fiber stack its store keeps from its last call — so the engine's pool is
//! sized for the running calls' slots plus a host-wide budget of idle ones ([`IdleBudget`]):
//! parking an instance never takes a slot from a call. When the budget is spent, the instance
//! parked longest, whichever plugin's, makes room: plugins called rarely do not keep the
//! places busy ones need.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Instant;

use wasmtime::Store;

use super::bindings::{fraud, payment, personalization, pricing};
use super::sandbox::StoreState;

/// The most idle instances one plugin keeps. Calls run on a handful of worker threads and
/// rarely wait inside a plugin (only for a capability, and those calls' instances are not
/// kept), so a plugin seldom has more than a couple of calls in flight at once.
pub(crate) const IDLE_PER_PLUGIN: usize = 4;
/// The most idle instances the whole host keeps, unless the instance slots are fewer.
pub(crate) const IDLE_PER_HOST: usize = 64;
/// An instance is retired after this many calls, so that whatever a plugin accumulates (a
/// fragmented heap, a cache it never trims) is bounded in time as well as in size.
pub(crate) const CALLS_PER_INSTANCE: u32 = 1_000;
/// An instance whose linear memory grew above this (or above a quarter of the plugin's own
/// memory limit, if that is less) is not kept: the next call must have most of its limit to
/// itself, and idle instances must not pin much memory.
pub(crate) const POOLED_MEMORY_CAP: u64 = 4 * 1024 * 1024;

/// A live instance and the store it lives in, with its exports typed by hook.
pub(crate) struct Warm {
    pub(crate) store: Store<StoreState>,
    pub(crate) exports: Exports,
    /// Calls it has served.
    calls: u32,
}

impl Warm {
    pub(crate) fn new(store: Store<StoreState>, exports: Exports) -> Self {
        Self {
            store,
            exports,
            calls: 0,
        }
    }
}

/// An instance's exports, as the hook's bindings load them (type-checked once, when it was
/// instantiated).
pub(crate) enum Exports {
    Pricing(pricing::PricingPlugin),
    Fraud(fraud::FraudPlugin),
    Personalization(personalization::PersonalizationPlugin),
    Payment {
        instance: wasmtime::component::Instance,
        steps: payment::Guest,
    },
}

/// Why an instance that answered is not kept, or that it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Kept for the plugin's next call.
    Kept,
    /// Reuse is off for this plugin (its manifest) or this host (`--fresh-instances`).
    Off,
    /// It served its [`CALLS_PER_INSTANCE`].
    Retired,
    /// The call reached for WASI: the context and its resources stay with this instance.
    UsedWasi,
    /// The call asked for a secret: its value may be in the instance's memory.
    ReadSecret,
    /// Its memory grew past what an idle instance may hold.
    Grown,
    /// The plugin already keeps as many idle instances as it may, or the host does and all
    /// of them are this plugin's (otherwise the one parked longest makes room).
    Full,
}

impl Reuse {
    /// Every fate, in the order of the metrics.
    pub(crate) const ALL: [Reuse; 7] = [
        Reuse::Kept,
        Reuse::Off,
        Reuse::Retired,
        Reuse::UsedWasi,
        Reuse::ReadSecret,
        Reuse::Grown,
        Reuse::Full,
    ];

    /// Its label in the metrics.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reuse::Kept => "kept",
            Reuse::Off => "reuse_off",
            Reuse::Retired => "retired",
            Reuse::UsedWasi => "used_wasi",
            Reuse::ReadSecret => "read_secret",
            Reuse::Grown => "grown",
            Reuse::Full => "pool_full",
        }
    }
}

/// The host-wide count of idle instances, against the extra slots the engine's pool has for
/// them, and the pools that may hold them (to find the instance parked longest).
pub(crate) struct IdleBudget {
    max: usize,
    used: AtomicUsize,
    pools: Mutex<Vec<Weak<WarmPool>>>,
}

impl IdleBudget {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
            pools: Mutex::new(Vec::new()),
        }
    }

    fn register(&self, pool: &Arc<WarmPool>) {
        let mut pools = lock(&self.pools);
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(pool));
    }

    /// Drops the instance parked longest in any pool but `except`; whether there was one.
    /// Approximate under contention (another call may take it first), which only costs a
    /// place this time.
    fn evict_oldest(&self, except: &WarmPool) -> bool {
        let pools: Vec<Arc<WarmPool>> = lock(&self.pools)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|p| !std::ptr::eq(Arc::as_ptr(p), except))
            .collect();
        let oldest = pools
            .iter()
            .filter_map(|p| p.oldest_parked().map(|at| (at, p)))
            .min_by_key(|(at, _)| *at);
        oldest.is_some_and(|(_, pool)| pool.drop_oldest())
    }

    /// How many idle instances the host may keep.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// How many it keeps now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(self: &Arc<Self>) -> Option<IdleToken> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.max).then_some(used + 1)
            })
            .ok()
            .map(|_| IdleToken(self.clone()))
    }
}

/// One idle instance's place in the [`IdleBudget`], given back when dropped.
struct IdleToken(Arc<IdleBudget>);

impl Drop for IdleToken {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An idle instance with its place in the budget. Fields drop in order: the store before
/// the token, so the engine's slot is free before the budget says so.
struct Idle {
    warm: Warm,
    _token: IdleToken,
    parked: Instant,
}

/// One plugin's idle instances, the most recently used last (taken first: its memory is the
/// likeliest to still be in the CPU's caches).
pub(crate) struct WarmPool {
    idle: Mutex<Vec<Idle>>,
    budget: Arc<IdleBudget>,
    enabled: bool,
}

impl WarmPool {
    pub(crate) fn new(budget: Arc<IdleBudget>, enabled: bool) -> Arc<Self> {
        let pool = Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            budget,
            enabled,
        });
        if enabled {
            pool.budget.register(&pool);
        }
        pool
    }

    /// An empty pool for the same plugin under new configuration or grants.
    pub(crate) fn renewed(&self) -> Arc<Self> {
        Self::new(self.budget.clone(), self.enabled)
    }

    /// An idle instance, if there is one.
    pub(crate) fn take(&self) -> Option<Warm> {
        if !self.enabled {
            return None;
        }
        let idle = lock(&self.idle).pop()?;
        Some(idle.warm)
    }

    /// When the instance parked longest here was parked.
    fn oldest_parked(&self) -> Option<Instant> {
        lock(&self.idle).first().map(|idle| idle.parked)
    }

    /// Drops the instance parked longest here; whether there was one.
    fn drop_oldest(&self) -> bool {
        let mut idle = lock(&self.idle);
        if idle.is_empty() {
            return false;
        }
        let oldest = idle.remove(0);
        drop(idle);
        drop(oldest);
        super::metrics::record_eviction();
        true
    }

    /// Keeps `warm` for a later call if it may be kept (see the module's documentation) and
    /// says whether it was; otherwise drops it. `memory_limit` is the plugin's, in bytes.
    pub(crate) fn give_back(&self, mut warm: Warm, memory_limit: u64) -> Reuse {
        let verdict = self.verdict(&mut warm, memory_limit);
        if verdict != Reuse::Kept {
            return verdict;
        }
        if lock(&self.idle).len() >= IDLE_PER_PLUGIN {
            return Reuse::Full;
        }
        // Never holding this pool's lock while another's is taken: two pools making room at
        // once must not wait for each other.
        let token = match self.budget.take() {
            Some(token) => Some(token),
            None if self.budget.evict_oldest(self) => self.budget.take(),
            None => None,
        };
        let Some(token) = token else {
            return Reuse::Full;
        };
        let mut idle = lock(&self.idle);
        if idle.len() >= IDLE_PER_PLUGIN {
            drop(idle);
            drop(warm);
            drop(token);
            return Reuse::Full;
        }
        idle.push(Idle {
            warm,
            _token: token,
            parked: Instant::now(),
        });
        Reuse::Kept
    }

    fn verdict(&self, warm: &mut Warm, memory_limit: u64) -> Reuse {
        if !self.enabled {
            return Reuse::Off;
        }
        warm.calls = warm.calls.saturating_add(1);
        if warm.calls >= CALLS_PER_INSTANCE {
            return Reuse::Retired;
        }
        let state = warm.store.data();
        if state.used_wasi() {
            return Reuse::UsedWasi;
        }
        if state.asked_for_secret() {
            return Reuse::ReadSecret;
        }
        if state.peak_memory > POOLED_MEMORY_CAP.min(memory_limit / 4) {
            return Reuse::Grown;
        }
        Reuse::Kept
    }
}

/// Locks one of this module's lists. A panic while holding one cannot leave it half-changed
/// (pushes, pops and removals only), so a poisoned lock is still a good one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
