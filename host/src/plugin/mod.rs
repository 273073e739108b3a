//! The plugin runtime: the WIT contract's host side, the sandbox, loading and calling.
//!
//! - [`manifest`]: `plugin.toml`, hook kinds, limits and failure policies.
//! - [`capability`]: outbound HTTP and secrets, asked for by manifests, granted by operators.
//! - [`Runtime`]: the one wasmtime engine, the epoch ticker, the artifact cache, loading.
//! - [`Plugin`]: a loaded plugin version; its methods are the hook calls.
//! - [`HookError`] / [`LoadError`]: every failure, named.
//! - `sandbox`: what an instance can reach (almost nothing); `validate`: what the host accepts
//!   back.
//! - `warm`: live instances kept between a plugin's calls, and when one is not kept.
//! - [`watch`]: the call log sample and the crash-loop breaker of an installed plugin.
//! - `native` (the `native-rules` build only): the example plugins' source compiled into the
//!   host, for the checkout benchmark's Wasm-versus-native comparison.

pub mod bindings;
mod call;
pub mod capability;
pub mod error;
pub mod manifest;
pub mod metrics;
#[cfg(feature = "native-rules")]
mod native;
mod runtime;
mod sandbox;
pub mod validate;
mod warm;
pub mod watch;

pub use call::{Call, CallStats, OUTPUT_LIMIT_BYTES, PaymentRequest, Plugin};
pub use capability::{Capability, Grants, SecretPolicy, SecretRef};
pub use error::{HookError, HookErrorKind, LoadError, PluginRef};
pub use manifest::{FailurePolicy, HookKind, Limits, Manifest};
pub(crate) use runtime::write_atomically;
pub use runtime::{DEFAULT_MAX_INSTANCES, Runtime, RuntimeConfig, component_path};
pub use sandbox::{LOG_CAP_BYTES, LogLine};
pub use watch::{CallWatch, WatchEvent, WatchPolicy};
