//! Capabilities: what a plugin may reach beyond its input, each asked for in its manifest and
//! granted by an operator (`cartridge:capabilities@0.1.0` in `wit/deps/capabilities`).
//!
//! - `http:<host>` or `http:<host>:<port>`: outbound HTTP to that host (without a port: 80
//!   and 443). No redirects, a timeout within the call's deadline, a capped response.
//! - `secrets`: the plugin's secrets, which the operator stores as references (an environment
//!   variable or a file) and the host resolves at each call. Values never reach the database.
//!
//! A plugin holds [`Grants`]: what its manifest asked for, narrowed by the registry to what an
//! operator granted. Calling outside them stops the call with `capability_denied`.

use std::collections::BTreeMap;
use std::fmt;

/// One capability, parsed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// Outbound HTTP to `host` (lower-cased), on `port` or on 80 and 443.
    Http {
        /// The host name or IP literal.
        host: String,
        /// The one port, if named.
        port: Option<u16>,
    },
    /// Reading the plugin's secrets.
    Secrets,
}

impl Capability {
    /// Parses `http:<host>[:<port>]` or `secrets`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "secrets" {
            return Ok(Capability::Secrets);
        }
        let Some(target) = text.strip_prefix("http:") else {
            return Err(format!(
                "unknown capability {text:?}: use \"http:<host>\", \"http:<host>:<port>\" or \"secrets\""
            ));
        };
        let (host, port) = match target.rsplit_once(':') {
            Some((host, port)) => (
                host,
                Some(
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("capability {text:?}: bad port {port:?}"))?,
                ),
            ),
            None => (target, None),
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(format!("capability {text:?}: bad host {host:?}"));
        }
        Ok(Capability::Http {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Secrets => f.write_str("secrets"),
            Capability::Http { host, port: None } => write!(f, "http:{host}"),
            Capability::Http {
                host,
                port: Some(port),
            } => write!(f, "http:{host}:{port}"),
        }
    }
}

/// Where the host finds a secret's value.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable of the host process.
    Env(String),
    /// A file (e.g. a mounted Kubernetes secret); trailing newlines are trimmed.
    File(String),
}

impl SecretRef {
    /// The value, if it can be read now.
    pub fn resolve(&self) -> Option<String> {
        match self {
            SecretRef::Env(name) => std::env::var(name).ok(),
            SecretRef::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|v| v.trim_end_matches(['\n', '\r']).to_owned()),
        }
    }
}

/// Where secret references may point. A reference is an operator's pointer to a value, not a
/// way to read the host's own files or configuration: files must lie in one of `dirs`, and
/// environment variables must not be the host's own `CARTRIDGE_…` settings (other than
/// `CARTRIDGE_SECRET_…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretPolicy {
    /// Directories secret files may be in (e.g. `/run/secrets`, where Docker and Kubernetes
    /// mount them).
    pub dirs: Vec<std::path::PathBuf>,
}

impl Default for SecretPolicy {
    fn default() -> Self {
        Self {
            dirs: vec![std::path::PathBuf::from("/run/secrets")],
        }
    }
}

impl SecretPolicy {
    /// Whether `reference` may be used, and if not, why.
    pub fn check(&self, reference: &SecretRef) -> Result<(), String> {
        match reference {
            SecretRef::Env(name) => {
                if name.is_empty()
                    || name.len() > 128
                    || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("{name:?} is not an environment variable name"));
                }
                if name.starts_with("CARTRIDGE_") && !name.starts_with("CARTRIDGE_SECRET_") {
                    return Err(format!(
                        "{name} is the host's own configuration, not a plugin secret \
                         (CARTRIDGE_SECRET_… names are allowed)"
                    ));
                }
                Ok(())
            }
            SecretRef::File(path) => {
                let path = std::path::Path::new(path);
                let plain = path.is_absolute()
                    && path.components().all(|c| {
                        matches!(
                            c,
                            std::path::Component::RootDir | std::path::Component::Normal(_)
                        )
                    });
                if plain && self.dirs.iter().any(|dir| path.starts_with(dir)) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} is not a plain absolute path inside a secrets directory ({})",
                        path.display(),
                        self.dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
    }
}

/// What one loaded plugin may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    capabilities: Vec<Capability>,
    secrets: BTreeMap<String, SecretRef>,
}

impl Grants {
    /// Grants of `capabilities` (already validated), with no secrets set.
    pub fn new(capabilities: Vec<Capability>) -> Self {
        Self {
            capabilities,
            secrets: BTreeMap::new(),
        }
    }

    /// These grants narrowed to the capabilities in `granted`.
    pub fn restricted_to(&self, granted: &[Capability]) -> Self {
        Self {
            capabilities: self
                .capabilities
                .iter()
                .filter(|c| granted.contains(c))
                .cloned()
                .collect(),
            secrets: self.secrets.clone(),
        }
    }

    /// These grants with the operator's secret references.
    pub fn with_secrets(mut self, secrets: BTreeMap<String, SecretRef>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Whether outbound HTTP to `host:port` is granted.
    pub fn allows_http(&self, host: &str, port: u16) -> bool {
        self.capabilities.iter().any(|c| match c {
            Capability::Http { host: h, port: p } => {
                h.eq_ignore_ascii_case(host)
                    && match p {
                        Some(p) => *p == port,
                        None => port == 80 || port == 443,
                    }
            }
            Capability::Secrets => false,
        })
    }

    /// Whether any outbound HTTP is granted.
    pub fn any_http(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::Http { .. }))
    }

    /// Whether secrets may be read.
    pub fn secrets_allowed(&self) -> bool {
        self.capabilities.contains(&Capability::Secrets)
    }

    /// Where secret `name` is, if the operator set it.
    pub fn secret(&self, name: &str) -> Option<&SecretRef> {
        self.secrets.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_and_print_back() {
        for text in ["secrets", "http:api.stripe.com", "http:127.0.0.1:8111"] {
            assert_eq!(Capability::parse(text).expect(text).to_string(), text);
        }
        for bad in [
            "filesystem",
            "http:",
            "http:host:0",
            "http:host:99999",
            "http:ho st",
            "http:a/b",
            "http:host:x",
        ] {
            assert!(Capability::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_references_stay_inside_the_policy() {
        let policy = SecretPolicy {
            dirs: vec!["/run/secrets".into(), "/srv/shop/secrets".into()],
        };
        for ok in [
            SecretRef::Env("STRIPE_SECRET_KEY".into()),
            SecretRef::Env("CARTRIDGE_SECRET_STRIPE".into()),
            SecretRef::File("/run/secrets/stripe".into()),
            SecretRef::File("/srv/shop/secrets/a/b".into()),
        ] {
            assert!(policy.check(&ok).is_ok(), "{ok:?}");
        }
        for bad in [
            SecretRef::Env("CARTRIDGE_DATABASE_URL".into()),
            SecretRef::Env("CARTRIDGE_ADMIN_TOKEN".into()),
            SecretRef::Env("A=B".into()),
            SecretRef::Env(String::new()),
            SecretRef::File("/etc/shadow".into()),
            SecretRef::File("/proc/self/environ".into()),
            SecretRef::File("/run/secrets/../../etc/passwd".into()),
            SecretRef::File("run/secrets/x".into()),
            SecretRef::File("/run/secretsX/x".into()),
        ] {
            assert!(policy.check(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn http_grants_match_host_and_port() {
        let grants = Grants::new(vec![
            Capability::parse("http:api.stripe.com").expect("ok"),
            Capability::parse("http:127.0.0.1:8111").expect("ok"),
        ]);
        assert!(grants.allows_http("api.stripe.com", 443));
        assert!(grants.allows_http("API.Stripe.com", 80));
        assert!(!grants.allows_http("api.stripe.com", 8443));
        assert!(grants.allows_http("127.0.0.1", 8111));
        assert!(!grants.allows_http("127.0.0.1", 5432));
        assert!(!grants.allows_http("evil.example", 443));
        assert!(!grants.secrets_allowed());
        let narrowed =
            grants.restricted_to(&[Capability::parse("http:127.0.0.1:8111").expect("ok")]);
        assert!(!narrowed.allows_http("api.stripe.com", 443));
        assert!(narrowed.allows_http("127.0.0.1", 8111));
    }
}
