//! What a plugin installed by the registry reports about its own calls: a sample of inputs and
//! outputs for the call log (the inputs shadow runs replay), and its failures in a row for the
//! crash-loop breaker.
//!
//! A [`CallWatch`] belongs to one loaded plugin version. Calls never wait on it: records go into
//! a bounded channel with `try_send` and are dropped when the writer falls behind (the log is a
//! sample, not an audit trail). When the breaker trips, the plugin stops being called at once on
//! this host — calls fail with `plugin_disabled` and the hook's failure policy decides — and the
//! registry persists the trip so that every host follows.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::error::PluginRef;

/// The largest input or output the call log keeps, as JSON. Larger calls are not sampled: a
/// truncated input could not be replayed.
pub const CALL_LOG_ENTRY_LIMIT_BYTES: usize = 64 * 1024;

/// One sampled call.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// Which plugin version answered.
    pub plugin: PluginRef,
    /// The hook's input, as JSON.
    pub input: String,
    /// The validated output, as JSON, when the call succeeded.
    pub output: Option<String>,
    /// The error code and message, when it failed.
    pub error: Option<String>,
    /// How long it took.
    pub duration: Duration,
}

/// What a watch tells the registry.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A sampled call.
    Call(CallRecord),
    /// The crash-loop breaker tripped.
    Tripped {
        /// The plugin version that tripped it.
        plugin: PluginRef,
        /// Failures in a row.
        failures: u32,
        /// The last failure, `code: message`.
        last_error: String,
        /// The registry row's version the watch was made for: a trip is recorded only if the
        /// operator has not changed the plugin since.
        epoch: i64,
    },
}

/// Sampling and breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct WatchPolicy {
    /// Log one call in this many; 0 logs none.
    pub sample_every: u64,
    /// Trip the breaker after this many failures in a row; 0 never trips.
    pub trip_after: u32,
}

impl Default for WatchPolicy {
    fn default() -> Self {
        Self {
            sample_every: 10,
            trip_after: 20,
        }
    }
}

/// The watch over one loaded plugin version.
#[derive(Debug)]
pub struct CallWatch {
    policy: WatchPolicy,
    calls: AtomicU64,
    failures_in_a_row: AtomicU32,
    tripped: AtomicBool,
    events: mpsc::Sender<WatchEvent>,
    epoch: i64,
}

impl CallWatch {
    /// A watch that reports to `events`; `tripped` when the registry already recorded a trip;
    /// `epoch` names the registry row's version it was made for.
    pub fn new(
        policy: WatchPolicy,
        events: mpsc::Sender<WatchEvent>,
        tripped: bool,
        epoch: i64,
    ) -> Self {
        Self {
            policy,
            calls: AtomicU64::new(0),
            failures_in_a_row: AtomicU32::new(0),
            tripped: AtomicBool::new(tripped),
            events,
            epoch,
        }
    }

    /// Whether the breaker is open: the plugin must not be called.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Failures in a row so far.
    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row.load(Ordering::Relaxed)
    }

    /// Whether this call should be logged.
    pub(crate) fn sample(&self) -> bool {
        let every = self.policy.sample_every;
        every != 0
            && self
                .calls
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(every)
    }

    /// Hands a sampled call to the writer, or drops it when the writer is behind.
    pub(crate) fn log(&self, record: CallRecord) {
        if record.input.len() > CALL_LOG_ENTRY_LIMIT_BYTES
            || record
                .output
                .as_ref()
                .is_some_and(|o| o.len() > CALL_LOG_ENTRY_LIMIT_BYTES)
        {
            return;
        }
        let _ = self.events.try_send(WatchEvent::Call(record));
    }

    /// Counts a call's outcome; trips the breaker on the failure that reaches the threshold.
    pub(crate) fn outcome(&self, plugin: &PluginRef, error: Option<(&str, String)>) {
        let Some((code, message)) = error else {
            self.failures_in_a_row.store(0, Ordering::Relaxed);
            return;
        };
        let failures = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = self.policy.trip_after;
        if threshold != 0 && failures >= threshold && !self.tripped.swap(true, Ordering::AcqRel) {
            tracing::error!(plugin = %plugin, failures, "crash-loop breaker tripped: {code}: {message}");
            super::metrics::record_trip(plugin);
            // The trip must reach the registry even when the call log is backed up.
            let events = self.events.clone();
            let event = WatchEvent::Tripped {
                plugin: plugin.clone(),
                failures,
                last_error: format!("{code}: {message}"),
                epoch: self.epoch,
            };
            if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event)
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                runtime.spawn(async move {
                    let _ = events.send(event).await;
                });
            }
        }
    }
}
