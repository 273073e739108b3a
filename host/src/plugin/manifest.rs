//! `plugin.toml`: what a plugin is, which hook it serves, and the limits it runs under.
//!
//! ```toml
//! name = "tiered-discount"
//! version = "1.2.0"
//! hook = "pricing"
//! contract = "0.1.0"
//! description = "Bulk pricing tiers"
//! failure-policy = "fail-open"     # optional; pricing and personalization default to open
//! capabilities = ["http:api.stripe.com", "secrets"]   # optional; see `capability`
//! component-sha256 = "9f86d0…"   # optional; `cartridge plugin build` writes it
//! reuse-instances = false          # optional; a new instance for every call (default: reused)
//!
//! [limits]                         # optional; these are the defaults for pricing
//! memory-mib = 16
//! deadline-ms = 20
//! fuel = 11_000_000                # optional instruction budget
//!
//! [config]                         # optional defaults, overridable by the operator
//! tiers = "3:500,10:1000"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Contract versions this host can run. A released contract is frozen; a new one is added
/// beside it.
pub const SUPPORTED_CONTRACTS: &[semver::Version] = &[semver::Version::new(0, 1, 0)];

/// The largest linear memory any plugin may ask for; also the size of a pooling slot.
pub const MAX_MEMORY_MIB: u32 = 64;
/// The longest deadline any plugin may ask for.
pub const MAX_DEADLINE_MS: u32 = 30_000;

/// A hook kind: where in the pipeline a plugin is called, and which WIT world it implements.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// Promotions and price rules on a cart.
    Pricing,
    /// Scores a checkout before payment.
    Fraud,
    /// Ranks and recommends products.
    Personalization,
    /// Connects to a payment gateway.
    Payment,
}

impl HookKind {
    /// Every hook kind, in pipeline order.
    pub const ALL: [HookKind; 4] = [
        HookKind::Personalization,
        HookKind::Pricing,
        HookKind::Fraud,
        HookKind::Payment,
    ];

    /// The name used in manifests, URLs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Pricing => "pricing",
            HookKind::Fraud => "fraud",
            HookKind::Personalization => "personalization",
            HookKind::Payment => "payment",
        }
    }

    /// The WIT interface a component of this kind must export (without version).
    pub fn export_interface(self) -> &'static str {
        match self {
            HookKind::Pricing => "cartridge:plugin/pricing",
            HookKind::Fraud => "cartridge:plugin/fraud",
            HookKind::Personalization => "cartridge:plugin/personalization",
            HookKind::Payment => "cartridge:plugin/payment",
        }
    }

    /// What happens when a plugin of this kind fails, unless its manifest says otherwise.
    /// Money and risk fail closed; presentation and promotions fail open.
    pub fn default_failure_policy(self) -> FailurePolicy {
        match self {
            HookKind::Pricing | HookKind::Personalization => FailurePolicy::FailOpen,
            HookKind::Fraud | HookKind::Payment => FailurePolicy::FailClosed,
        }
    }

    /// Default limits per kind. Payment connectors wait on gateways, so theirs are longer.
    pub fn default_limits(self) -> Limits {
        let (memory_mib, deadline_ms) = match self {
            HookKind::Pricing | HookKind::Personalization => (16, 20),
            HookKind::Fraud => (16, 50),
            HookKind::Payment => (16, 10_000),
        };
        Limits {
            memory_mib,
            deadline_ms,
            fuel: None,
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HookKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                format!("unknown hook {s:?}: expected pricing, fraud, personalization or payment")
            })
    }
}

/// What the pipeline does when a plugin fails (deadline, trap, invalid output…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Carry on as if the plugin had not been there (and record the failure).
    FailOpen,
    /// Stop the operation: the checkout does not go ahead.
    FailClosed,
}

/// Resource limits for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap, in MiB.
    pub memory_mib: u32,
    /// Wall-clock deadline per call, in milliseconds.
    pub deadline_ms: u32,
    /// Instruction budget (wasmtime fuel) per call; none means only the deadline applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

impl Limits {
    /// The memory cap in bytes.
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) * 1024 * 1024
    }

    /// The deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(u64::from(self.deadline_ms))
    }
}

/// The manifest as written, before defaults are filled in.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: semver::Version,
    hook: HookKind,
    contract: semver::Version,
    #[serde(default)]
    description: String,
    failure_policy: Option<FailurePolicy>,
    #[serde(default)]
    capabilities: Vec<String>,
    limits: Option<RawLimits>,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    component_sha256: Option<String>,
    reuse_instances: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<u32>,
    deadline_ms: Option<u32>,
    fuel: Option<u64>,
}

/// A validated manifest with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Manifest {
    /// Lower-case letters, digits and dashes; 1 to 64 characters.
    pub name: String,
    /// The plugin's own version.
    pub version: semver::Version,
    /// The hook it serves.
    pub hook: HookKind,
    /// The WIT contract version it was built against.
    pub contract: semver::Version,
    /// One line for operators.
    pub description: String,
    /// What happens when it fails.
    pub failure_policy: FailurePolicy,
    /// Capabilities it asks for beyond logging and configuration.
    pub capabilities: Vec<String>,
    /// Limits per call.
    pub limits: Limits,
    /// Default configuration values.
    pub config: BTreeMap<String, String>,
    /// The SHA-256 of the component this manifest was written for (lower-case hex), if it
    /// names one: the host then refuses any other component with it. It keeps a manifest from
    /// going live with the wrong component, such as the old one still beside it while a new
    /// bundle is being copied into the plugins directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_sha256: Option<String>,
    /// Whether an instance that answered a call may serve the plugin's later calls (the
    /// default), keeping its memory — the guest's heap and statics — in between. False asks for
    /// a new instance for every call, at several times the cost of a call: for plugins whose
    /// author wants each call to start from nothing.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub reuse_instances: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid manifest: {0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Parses and validates a `plugin.toml`.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError(e.to_string()))?;
        let defaults = raw.hook.default_limits();
        let limits = match raw.limits {
            None => defaults,
            Some(l) => Limits {
                memory_mib: l.memory_mib.unwrap_or(defaults.memory_mib),
                deadline_ms: l.deadline_ms.unwrap_or(defaults.deadline_ms),
                fuel: l.fuel,
            },
        };
        let config = raw
            .config
            .into_iter()
            .map(|(key, value)| match value {
                toml::Value::String(s) => Ok((key, s)),
                toml::Value::Integer(i) => Ok((key, i.to_string())),
                toml::Value::Float(f) => Ok((key, f.to_string())),
                toml::Value::Boolean(b) => Ok((key, b.to_string())),
                _ => Err(ManifestError(format!(
                    "config.{key} must be a string, a number or a boolean"
                ))),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let manifest = Manifest {
            failure_policy: raw
                .failure_policy
                .unwrap_or_else(|| raw.hook.default_failure_policy()),
            name: raw.name,
            version: raw.version,
            hook: raw.hook,
            contract: raw.contract,
            description: raw.description,
            capabilities: raw.capabilities,
            limits,
            config,
            component_sha256: raw.component_sha256.map(|d| d.to_ascii_lowercase()),
            reuse_instances: raw.reuse_instances.unwrap_or(true),
        };
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let err = |msg: String| Err(ManifestError(msg));
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || self.name.starts_with('-')
        {
            return err(format!(
                "name {:?}: use 1 to 64 lower-case letters, digits and dashes",
                self.name
            ));
        }
        if !SUPPORTED_CONTRACTS.contains(&self.contract) {
            return err(format!(
                "contract {} is not supported by this host (supported: {})",
                self.contract,
                SUPPORTED_CONTRACTS
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let limits = &self.limits;
        if limits.memory_mib == 0 || limits.memory_mib > MAX_MEMORY_MIB {
            return err(format!(
                "limits.memory-mib must be 1 to {MAX_MEMORY_MIB}, not {}",
                limits.memory_mib
            ));
        }
        if limits.deadline_ms == 0 || limits.deadline_ms > MAX_DEADLINE_MS {
            return err(format!(
                "limits.deadline-ms must be 1 to {MAX_DEADLINE_MS}, not {}",
                limits.deadline_ms
            ));
        }
        if limits.fuel == Some(0) {
            return err("limits.fuel must be above 0".to_owned());
        }
        for capability in &self.capabilities {
            super::capability::Capability::parse(capability).map_err(ManifestError)?;
        }
        if let Some(digest) = &self.component_sha256
            && (digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return err(format!(
                "component-sha256 must be 64 hexadecimal digits, not {digest:?}"
            ));
        }
        Ok(())
    }

    /// Refuses `digest` (of the component offered with this manifest) if the manifest names
    /// another.
    pub fn check_component(&self, digest: &str) -> Result<(), ManifestError> {
        match &self.component_sha256 {
            Some(pinned) if pinned != digest => Err(ManifestError(format!(
                "component-sha256 is {pinned}, but the component's SHA-256 is {digest}: not \
                 the component this manifest was written for"
            ))),
            _ => Ok(()),
        }
    }

    /// The capabilities it asks for, parsed (logging and configuration need no asking).
    pub fn requested_capabilities(&self) -> Vec<super::capability::Capability> {
        self.capabilities
            .iter()
            .filter_map(|c| super::capability::Capability::parse(c).ok())
            .collect()
    }

    /// `name@version`, as errors and logs show it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "tiered-discount"
        version = "1.0.0"
        hook = "pricing"
        contract = "0.1.0"
    "#;

    #[test]
    fn a_minimal_manifest_gets_the_hooks_defaults() {
        let m = Manifest::parse(MINIMAL).expect("valid");
        assert_eq!(m.failure_policy, FailurePolicy::FailOpen);
        assert_eq!(m.limits, HookKind::Pricing.default_limits());
        assert_eq!(m.id(), "tiered-discount@1.0.0");
    }

    #[test]
    fn fraud_and_payment_fail_closed_by_default() {
        for hook in ["fraud", "payment"] {
            let m = Manifest::parse(&MINIMAL.replace("pricing", hook)).expect("valid");
            assert_eq!(m.failure_policy, FailurePolicy::FailClosed, "{hook}");
        }
    }

    #[test]
    fn limits_and_policy_can_be_set() {
        let text = format!(
            "{MINIMAL}\nfailure-policy = \"fail-closed\"\n[limits]\nmemory-mib = 4\nfuel = 1000\n[config]\ntiers = \"3:500\"\nreview-at = 50\nstrict = true\n"
        );
        let m = Manifest::parse(&text).expect("valid");
        assert_eq!(m.failure_policy, FailurePolicy::FailClosed);
        assert_eq!(m.limits.memory_mib, 4);
        assert_eq!(m.limits.deadline_ms, 20);
        assert_eq!(m.limits.fuel, Some(1000));
        assert_eq!(m.config.get("tiers").map(String::as_str), Some("3:500"));
        assert_eq!(m.config.get("review-at").map(String::as_str), Some("50"));
        assert_eq!(m.config.get("strict").map(String::as_str), Some("true"));
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let cases = [
            (
                MINIMAL.replace("tiered-discount", "Tiered Discount"),
                "name",
            ),
            (MINIMAL.replace("0.1.0", "9.0.0"), "contract 9.0.0"),
            (MINIMAL.replace("pricing", "shipping"), "unknown variant"),
            (
                format!("{MINIMAL}\n[limits]\nmemory-mib = 4096\n"),
                "memory-mib",
            ),
            (
                format!("{MINIMAL}\n[limits]\ndeadline-ms = 0\n"),
                "deadline-ms",
            ),
            (format!("{MINIMAL}\n[limits]\nfuel = 0\n"), "fuel"),
            (
                format!("{MINIMAL}\ncapabilities = [\"filesystem\"]\n"),
                "filesystem",
            ),
            (format!("{MINIMAL}\nunknown-key = 1\n"), "unknown field"),
            (
                format!("{MINIMAL}\n[config]\nnested = {{ a = 1 }}\n"),
                "config.nested",
            ),
            (MINIMAL.replace("1.0.0", "one"), "version"),
            ("not toml at all [".to_owned(), "invalid manifest"),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(&text).expect_err(expected).to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn a_pinned_component_digest_is_checked() {
        let digest = "AB".repeat(32);
        let m =
            Manifest::parse(&format!("component-sha256 = \"{digest}\"\n{MINIMAL}")).expect("valid");
        assert_eq!(
            m.component_sha256.as_deref(),
            Some("ab".repeat(32).as_str())
        );
        assert!(m.check_component(&"ab".repeat(32)).is_ok());
        let err = m
            .check_component(&"cd".repeat(32))
            .expect_err("another component");
        assert!(err.0.contains("not the component"), "{err}");
        // Without a pin any component goes.
        assert!(
            Manifest::parse(MINIMAL)
                .expect("valid")
                .check_component("x")
                .is_ok()
        );
        for bad in ["abc", &"zz".repeat(32)] {
            let err = Manifest::parse(&format!("component-sha256 = \"{bad}\"\n{MINIMAL}"))
                .expect_err(bad);
            assert!(err.0.contains("component-sha256"), "{err}");
        }
    }
}
