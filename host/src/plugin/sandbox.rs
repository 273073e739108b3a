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
//! The other imports are the `host` interface of the contract (bounded logging, the plugin's
//! configuration values) and the capabilities — outbound HTTP and secrets — which answer only
//! within the plugin's [`Grants`] and stop the call with `capability_denied` outside them.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView};

use super::bindings::host::{self, LogLevel};
use super::bindings::{http, secrets};
use super::capability::{Grants, SecretRef};
use super::error::{CapabilityDenied, MemoryLimitExceeded};

/// The most a call may log, all lines together.
pub const LOG_CAP_BYTES: usize = 4 * 1024;
/// How much of standard error is kept to explain a trap (a panic message).
const STDERR_CAP_BYTES: usize = 4 * 1024;
/// Tables are tiny in plugins; this only stops a runaway `table.grow`.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// The largest response body an outbound HTTP request may bring back.
pub const HTTP_RESPONSE_LIMIT_BYTES: usize = 1024 * 1024;
/// The longest an outbound HTTP request may take, whatever the plugin's deadline.
const HTTP_TIMEOUT_CAP: Duration = Duration::from_secs(10);

/// One client for every plugin: connection reuse per granted host. No redirects (a granted
/// host must not send a request on to one that is not), no proxy from the environment, and
/// host names that resolve only to public addresses (see [`PublicAddresses`]).
static HTTP_CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(PublicAddresses))
        .connect_timeout(HTTP_TIMEOUT_CAP)
        .build()
        .unwrap_or_default()
});

/// Resolves granted host names, keeping only public addresses: a grant of `http:vendor.example`
/// must not become a way into the host's own network (loopback, private ranges, link-local
/// cloud metadata) when the name resolves — or is rebound — there. Reaching an internal
/// address takes a grant of that IP literal, which is not resolved.
struct PublicAddresses;

impl reqwest::dns::Resolve for PublicAddresses {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let public: Vec<std::net::SocketAddr> = found.filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!("{} resolves to no public address", name.as_str()).into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What went wrong with a request, with its causes, but without the URL: its query may hold
/// what the plugin would not log.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Whether `ip` is on the public internet.
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct LogLine {
    /// Its level.
    #[schemars(extend("enum" = ["trace", "debug", "info", "warn", "error"]))]
    pub level: &'static str,
    /// Its text.
    pub message: String,
}

/// Per-call state: everything a store holds besides the instance.
pub struct StoreState {
    /// The WASI context and its standard error, built when the plugin first reaches for
    /// WASI (a panic's message, say), not for every call: most calls never do, and building
    /// one (its pipes, its random sources) was a measurable share of a call.
    wasi: Option<(WasiCtx, MemoryOutputPipe)>,
    table: ResourceTable,
    config: Arc<BTreeMap<String, String>>,
    memory_limit: u64,
    pub(crate) peak_memory: u64,
    pub(crate) logs: Vec<LogLine>,
    log_bytes: usize,
    pub(crate) logs_dropped: u32,
    /// The plugin's `name@version`, for the host's own log lines.
    plugin_id: Arc<str>,
    /// What the plugin may reach.
    grants: Arc<Grants>,
    /// When the call must end; outbound requests get at most what is left.
    deadline: Instant,
    /// Secret values read during this call, blanked out of its log lines.
    secrets_read: Vec<String>,
    /// Whether the plugin asked for a secret at all (values too short to blank included): its
    /// instance is then not kept for another call.
    asked_for_secret: bool,
}

impl StoreState {
    pub(crate) fn new(
        plugin_id: Arc<str>,
        config: Arc<BTreeMap<String, String>>,
        memory_limit: u64,
        grants: Arc<Grants>,
        deadline: Instant,
    ) -> Self {
        Self {
            wasi: None,
            table: ResourceTable::new(),
            config,
            memory_limit,
            peak_memory: 0,
            logs: Vec::new(),
            log_bytes: 0,
            logs_dropped: 0,
            plugin_id,
            grants,
            deadline,
            secrets_read: Vec::new(),
            asked_for_secret: false,
        }
    }

    /// Readies the state for the next call on the same instance: its deadline, an empty log.
    /// What the instance itself keeps (its memory) is the plugin's; see `plugin::warm`.
    pub(crate) fn start_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.logs.clear();
        self.log_bytes = 0;
        self.logs_dropped = 0;
    }

    /// Whether the plugin asked for a secret during the instance's life, whatever the answer.
    pub(crate) fn asked_for_secret(&self) -> bool {
        self.asked_for_secret
    }

    /// Whether the instance has reached for WASI (its context exists, with whatever it
    /// opened).
    pub(crate) fn used_wasi(&self) -> bool {
        self.wasi.is_some()
    }

    /// What the plugin wrote to standard error (a panic's message), secrets blanked.
    pub(crate) fn stderr(&self) -> String {
        let Some((_, stderr)) = &self.wasi else {
            return String::new();
        };
        self.blank_secrets(String::from_utf8_lossy(&stderr.contents()).trim())
    }

    /// `text` with every secret value read during this call replaced by `[secret]`: nothing a
    /// plugin says — a log line, an error or panic message, an answer — carries one out.
    pub(crate) fn blank_secrets(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets_read.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret.as_str(), "[secret]");
        }
        text
    }

    /// Whether the call read any secret.
    pub(crate) fn read_secrets(&self) -> bool {
        !self.secrets_read.is_empty()
    }

    /// Whether `text` holds a secret value read during this call.
    pub(crate) fn reveals_secret(&self, text: &str) -> bool {
        self.secrets_read
            .iter()
            .any(|secret| !secret.is_empty() && text.contains(secret.as_str()))
    }
}

impl wasmtime_wasi::WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (ctx, _) = self.wasi.get_or_insert_with(|| {
            let stderr = MemoryOutputPipe::new(STDERR_CAP_BYTES);
            // No files, no network, no environment; clocks frozen and randomness seeded, so
            // that a call is a function of its input.
            let ctx = WasiCtxBuilder::new()
                .stderr(stderr.clone())
                .stdout(MemoryOutputPipe::new(STDERR_CAP_BYTES))
                .wall_clock(FrozenClock)
                .monotonic_clock(FrozenClock)
                .insecure_random_seed(0x0c47_7121_d9e5_0000)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build();
            (ctx, stderr)
        });
        WasiCtxView {
            ctx,
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
        let message = self.blank_secrets(&message);
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

fn http_error(
    message: impl Into<String>,
) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
    Ok(Err(http::HttpError::InvalidRequest(message.into())))
}

impl http::Host for StoreState {
    async fn send(
        &mut self,
        request: http::Request,
    ) -> wasmtime::Result<Result<http::Response, http::HttpError>> {
        let Ok(url) = reqwest::Url::parse(&request.url) else {
            return http_error("the URL is not an absolute URL");
        };
        if !matches!(url.scheme(), "http" | "https") {
            return http_error("only http and https URLs");
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return http_error("the URL has no host");
        };
        if !self.grants.allows_http(host, port) {
            return Err(CapabilityDenied(format!("http to {host}:{port}")).into());
        }
        let method = match request.method.to_ascii_uppercase().as_str() {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            "PUT" => reqwest::Method::PUT,
            "PATCH" => reqwest::Method::PATCH,
            "DELETE" => reqwest::Method::DELETE,
            other => return http_error(format!("method {other:?} is not allowed")),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &request.headers {
            let Ok(name) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) else {
                return http_error(format!("bad header name {name:?}"));
            };
            if matches!(
                name.as_str(),
                "host" | "content-length" | "connection" | "transfer-encoding"
            ) {
                continue;
            }
            let Ok(value) = reqwest::header::HeaderValue::from_str(value) else {
                return http_error(format!("bad value for header {name}"));
            };
            headers.append(name, value);
        }
        // Leave the plugin a moment after a timeout to turn it into an answer of its own.
        let left = self.deadline.saturating_duration_since(Instant::now());
        let left = left.saturating_sub((left / 10).min(Duration::from_millis(100)));
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms)))
            .unwrap_or(HTTP_TIMEOUT_CAP)
            .min(HTTP_TIMEOUT_CAP)
            .min(left);
        if timeout.is_zero() {
            return Ok(Err(http::HttpError::Timeout));
        }
        let sent = HTTP_CLIENT
            .request(method, url)
            .headers(headers)
            .body(request.body)
            .timeout(timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return Ok(Err(http::HttpError::Timeout)),
            Err(e) => return Ok(Err(http::HttpError::Connection(describe(e)))),
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > HTTP_RESPONSE_LIMIT_BYTES {
                        return Ok(Err(http::HttpError::TooLarge(body.len() as u64)));
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_timeout() => return Ok(Err(http::HttpError::Timeout)),
                Err(e) => return Ok(Err(http::HttpError::Connection(describe(e)))),
            }
        }
        Ok(Ok(http::Response {
            status,
            headers,
            body,
        }))
    }
}

impl secrets::Host for StoreState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        if !self.grants.secrets_allowed() {
            return Err(CapabilityDenied("secrets".to_owned()).into());
        }
        self.asked_for_secret = true;
        let value = self.grants.secret(&name).and_then(SecretRef::resolve);
        if let Some(value) = &value
            && value.len() >= 4
        {
            self.secrets_read.push(value.clone());
        }
        Ok(value)
    }
}

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
    http::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
        &mut linker,
        |state| state,
    )?;
    secrets::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
        &mut linker,
        |state| state,
    )?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(internal.parse().expect("ip")), "{internal}");
        }
        for public in ["54.187.174.169", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }
}
