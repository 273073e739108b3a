//! Named failures of plugin calls and plugin loading.
//!
//! Every failure carries the plugin, its version and the hook, and has a stable code (the
//! `code()` of its kind) that the API, metrics and the CLI report. A plugin can never make the
//! host panic: whatever it does ends as one of these.

use std::fmt;
use std::time::Duration;

use super::manifest::HookKind;

/// A plugin version and the hook it served: which plugin decided, or failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct PluginRef {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    #[schemars(with = "String")]
    pub version: semver::Version,
    /// The hook it was serving.
    pub hook: HookKind,
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({} hook)", self.name, self.version, self.hook)
    }
}

/// A failed hook call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("plugin {plugin}: {kind}")]
pub struct HookError {
    /// The plugin that failed.
    pub plugin: PluginRef,
    /// What went wrong.
    pub kind: HookErrorKind,
}

impl HookError {
    /// The stable code of the failure, e.g. `deadline_exceeded`.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
}

/// What went wrong in a hook call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookErrorKind {
    /// The call ran past its wall-clock deadline and was stopped.
    #[error("deadline of {} ms exceeded", .deadline.as_millis())]
    DeadlineExceeded {
        /// The deadline in force.
        deadline: Duration,
    },
    /// The call used up its instruction budget and was stopped.
    #[error("instruction budget of {budget} exhausted")]
    FuelExhausted {
        /// The budget in force.
        budget: u64,
    },
    /// The plugin tried to grow its memory past its cap and was stopped.
    #[error("memory limit of {limit} bytes exceeded (asked for {requested} bytes)")]
    MemoryLimitExceeded {
        /// The cap in force, in bytes.
        limit: u64,
        /// What the plugin asked for, in bytes.
        requested: u64,
    },
    /// The plugin trapped: a panic, an abort, an out-of-bounds access, a stack overflow.
    #[error("trapped: {message}")]
    Trap {
        /// The guest's panic message when it printed one, else the trap's description.
        message: String,
    },
    /// The plugin returned something the host will not accept.
    #[error("invalid output: {reason}")]
    InvalidOutput {
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin returned more than the host accepts from one call.
    #[error("output of {size} bytes is over the limit of {limit} bytes")]
    OutputTooLarge {
        /// The output's size, as JSON.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The plugin reached for something it was not granted (files, environment, network).
    #[error("capability denied: {capability}")]
    CapabilityDenied {
        /// What it reached for.
        capability: String,
    },
    /// The plugin answered with an error of its own (`plugin-error` in the contract).
    #[error("plugin reported {code}: {message}")]
    PluginError {
        /// The plugin's code.
        code: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin is switched off by the crash-loop breaker after too many failures in a row;
    /// it is not called until an operator enables it or activates another version.
    #[error("disabled after {failures} consecutive failures")]
    Disabled {
        /// The failures in a row that tripped the breaker.
        failures: u32,
    },
    /// The host could not start the call: every instance slot stayed busy until the call's
    /// deadline. Retryable.
    #[error("no instance slot available: {reason}")]
    Unavailable {
        /// Why: how many slots stayed busy for how long, or the allocator's explanation.
        reason: String,
    },
}

impl HookErrorKind {
    /// Whether the sandbox stopped the plugin or refused its answer — what the crash-loop
    /// breaker counts. A `plugin-error` is the plugin answering; `unavailable` is the host's
    /// capacity.
    pub fn is_crash(&self) -> bool {
        !matches!(
            self,
            HookErrorKind::PluginError { .. }
                | HookErrorKind::Unavailable { .. }
                | HookErrorKind::Disabled { .. }
        )
    }

    /// The stable code, as the API and metrics report it.
    pub fn code(&self) -> &'static str {
        match self {
            HookErrorKind::DeadlineExceeded { .. } => "deadline_exceeded",
            HookErrorKind::FuelExhausted { .. } => "fuel_exhausted",
            HookErrorKind::MemoryLimitExceeded { .. } => "memory_limit_exceeded",
            HookErrorKind::Trap { .. } => "trap",
            HookErrorKind::InvalidOutput { .. } => "invalid_output",
            HookErrorKind::OutputTooLarge { .. } => "output_too_large",
            HookErrorKind::CapabilityDenied { .. } => "capability_denied",
            HookErrorKind::PluginError { .. } => "plugin_error",
            HookErrorKind::Disabled { .. } => "plugin_disabled",
            HookErrorKind::Unavailable { .. } => "unavailable",
        }
    }
}

/// Why a plugin could not be loaded. A plugin that fails to load never replaces one that works.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    /// The file is not a WebAssembly component this host can compile.
    #[error("not a valid component: {0}")]
    Compile(String),
    /// The component does not export the hook its manifest names, or exports it under a
    /// contract version the manifest does not claim.
    #[error("component does not implement the {hook} hook of contract {contract}: {reason}")]
    WrongExport {
        /// The manifest's hook.
        hook: HookKind,
        /// The manifest's contract version.
        contract: semver::Version,
        /// What is missing.
        reason: String,
    },
    /// The component imports something the host does not grant.
    #[error("capability denied: the component imports {0}, which this host does not provide")]
    CapabilityDenied(String),
    /// Reading the plugin's files failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl LoadError {
    /// The stable code, as the API reports it.
    pub fn code(&self) -> &'static str {
        match self {
            LoadError::Manifest(_) => "invalid_manifest",
            LoadError::Compile(_) => "invalid_component",
            LoadError::WrongExport { .. } => "wrong_export",
            LoadError::CapabilityDenied(_) => "capability_denied",
            LoadError::Io { .. } => "io_error",
        }
    }
}

/// Raised inside a call when the deadline passes; recognised when the call unwinds.
#[derive(Debug)]
pub(crate) struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// Raised by the resource limiter when the guest grows past its cap.
#[derive(Debug)]
pub(crate) struct MemoryLimitExceeded {
    pub limit: u64,
    pub requested: u64,
}

impl fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory limit {} exceeded", self.limit)
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// Raised when the guest calls a WASI function that the sandbox does not grant.
#[derive(Debug)]
pub(crate) struct CapabilityDenied(pub String);

impl fmt::Display for CapabilityDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "capability denied: {}", self.0)
    }
}

impl std::error::Error for CapabilityDenied {}
