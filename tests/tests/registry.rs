//! The plugin registry end to end: uploads validated before they are stored, activation,
//! rollback, disable, order, configuration, the watched directory, hot swaps under checkout
//! load, the crash-loop breaker, shadow runs, several hosts on one database, and every answer
//! of the registry's routes against the schema `/openapi.json` gives it. Real hosts on port 0,
//! a fresh database per test (SQLite always, PostgreSQL when configured), real plugins.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartridge_host::api::AppState;
use cartridge_host::db::Db;
use cartridge_host::plugin::{Runtime, RuntimeConfig, WatchPolicy};
use cartridge_host::registry::RegistryConfig;
use cartridge_host::registry::directory::PluginsDirectory;
use cartridge_host::server::{Application, open_registry};
use cartridge_tests::{TestDatabase, plugins, test_databases, with_deadline};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN: &str = "adm_registry_test";

/// One `cartridge serve`-like host: its own runtime and compiled cache, the shared database.
struct Host {
    base: String,
    client: reqwest::Client,
    state: AppState,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _cache: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn config(trip_after: u32) -> RegistryConfig {
    RegistryConfig {
        watch: WatchPolicy {
            sample_every: 1,
            trip_after,
        },
        poll_interval: Duration::from_millis(100),
        // The tests keep their secret files in temporary directories.
        secrets: cartridge_host::plugin::SecretPolicy {
            dirs: vec![std::env::temp_dir()],
        },
        ..RegistryConfig::default()
    }
}

async fn start_host(db: &TestDatabase, dir: Option<&Path>, config: RegistryConfig) -> Host {
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 64,
        cache_dir: Some(cache.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let pool = Db::connect(&db.url).await.expect("connect");
    pool.migrate().await.expect("migrate");
    let (registry, _) = open_registry(pool.clone(), Arc::new(runtime), config, dir)
        .await
        .expect("registry");
    let mut tasks = registry.spawn();
    let state = AppState::new(pool, registry);
    state.add_admin_token("ops", ADMIN).await.expect("token");
    let app = Application::build(SocketAddr::from(([127, 0, 0, 1], 0)), state.clone())
        .await
        .expect("bind");
    let addr = app.local_addr().expect("addr");
    tasks.push(tokio::spawn(async move {
        let _ = app.run().await;
    }));
    Host {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        state,
        tasks,
        _cache: cache,
    }
}

struct Response {
    status: u16,
    body: Value,
}

impl Host {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.expect("request");
        Response {
            status: r.status().as_u16(),
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        self.send(
            method,
            path,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            body,
        )
        .await
    }

    /// Uploads a version through the API (multipart), activating it when asked.
    async fn upload(&self, manifest: &str, wasm: Vec<u8>, activate: bool) -> Response {
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest.to_owned())
            .part(
                "component",
                reqwest::multipart::Part::bytes(wasm).file_name("plugin.wasm"),
            );
        let r = self
            .client
            .post(format!("{}/admin/plugins?activate={activate}", self.base))
            .bearer_auth(ADMIN)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        Response {
            status: r.status().as_u16(),
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    /// The version of `name` this host serves, if any.
    /// The digest of the component stored as `name`'s `version`, if that version is stored.
    async fn stored_digest(&self, name: &str, version: &str) -> Option<String> {
        let r = self
            .admin(Method::GET, &format!("/admin/plugins/{name}"), None)
            .await;
        r.body["versions"]
            .as_array()?
            .iter()
            .find(|v| v["version"] == version)
            .and_then(|v| v["digest"].as_str().map(str::to_owned))
    }

    fn serving(&self, name: &str) -> Option<String> {
        self.state
            .plugin(name)
            .map(|p| p.manifest().version.to_string())
    }

    /// A tee at EUR 19.99, 10 000 in stock.
    async fn seed(&self) {
        let r = self
            .admin(
                Method::POST,
                "/admin/locations",
                Some(json!({"id": "eu", "name": "Berlin", "priority": 1})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/admin/products",
                Some(json!({"title": "Tee", "variants": [
                    {"sku": "TEE", "title": "Tee", "prices": {"EUR": 1999}}]})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/admin/inventory/TEE/eu/adjust",
                Some(json!({"delta": 10_000, "reason": "receive"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// A cart with `quantity` tees; returns (cart, token, priced cart).
    /// Waits until the call log holds at least `at_least` calls of plugin `name` (the log is
    /// written behind the calls).
    async fn calls_logged(&self, name: &str, at_least: usize) {
        let path = format!("/admin/plugins/{name}/calls");
        eventually("calls are logged", async || {
            let r = self.admin(Method::GET, &path, None).await;
            r.body["calls"]
                .as_array()
                .is_some_and(|c| c.len() >= at_least)
        })
        .await;
    }

    async fn cart(&self, quantity: u32) -> (String, String, Value) {
        let r = self
            .send(
                Method::POST,
                "/store/carts",
                &[],
                Some(json!({"currency": "EUR"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let cart = r.body["id"].as_str().expect("id").to_owned();
        let token = r.body["token"].as_str().expect("token").to_owned();
        let r = self
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/lines"),
                &[("x-cart-token", &token)],
                Some(json!({"sku": "TEE", "quantity": quantity})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (cart, token, r.body)
    }

    async fn checkout(&self, cart: &str, token: &str, key: &str) -> Response {
        self.send(
            Method::POST,
            &format!("/store/carts/{cart}/checkout"),
            &[("x-cart-token", token), ("idempotency-key", key)],
            Some(json!({
                "email": "ada@example.com",
                "shipping_address": {"name": "Ada", "line1": "Main St 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
                "payment_token": "tok_visa",
            })),
        )
        .await
    }
}

/// `tiered-discount`'s manifest as version `version` with tiers `tiers` by default.
fn tiered(version: &str, tiers: &str) -> String {
    plugins()
        .manifest_text("tiered-discount")
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
        .replace(
            "tiers = \"3:500,10:1000,25:1500\"",
            &format!("tiers = \"{tiers}\""),
        )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the pricing plugins took off a priced cart.
fn discount(priced: &Value) -> i64 {
    let part = |key: &str| {
        priced["pricing"][key]
            .as_i64()
            .unwrap_or_else(|| panic!("no pricing.{key} in {priced}"))
    };
    part("line_discounts") + part("order_discount")
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn an_upload_is_validated_activated_rolled_back_and_audited() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(0)).await;
        host.seed().await;
        let wasm = plugins().wasm_bytes("tiered-discount");

        // v1: 5 % from 3 units.
        let r = host
            .upload(&tiered("1.0.0", "3:500"), wasm.clone(), true)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["plugin"]["active_version"], "1.0.0");
        let (_, _, priced) = host.cart(4).await;
        assert_eq!(discount(&priced), 4 * 1999 * 5 / 100, "{priced}");

        // The same upload again is a no-op; the same version with other bytes is refused.
        let r = host
            .upload(&tiered("1.0.0", "3:500"), wasm.clone(), false)
            .await;
        assert_eq!(
            (r.status, r.body["uploaded"]["created"].as_bool()),
            (200, Some(false))
        );
        let r = host
            .upload(
                &tiered("1.0.0", "3:700"),
                plugins().wasm_bytes("panicker"),
                false,
            )
            .await;
        assert_eq!(r.status, 409, "{}", r.body);

        // Bad uploads: each refused with its reason, and v1 keeps serving.
        let hostile_manifest = |name: &str, hook: &str| {
            format!(
                "name = \"tiered-discount\"\nversion = \"9.0.0\"\nhook = \"{hook}\"\ncontract = \"0.1.0\"\n# {name}\n"
            )
        };
        let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
            (
                tiered("2.0.0", "3:500"),
                b"\0asm not really".to_vec(),
                422,
                "invalid_component",
            ),
            (
                tiered("2.0.0", "3:500").replace("0.1.0", "7.0.0"),
                wasm.clone(),
                422,
                "invalid_manifest",
            ),
            (
                "name = \"x\"".to_owned(),
                wasm.clone(),
                422,
                "invalid_manifest",
            ),
            (
                hostile_manifest("a fraud plugin", "fraud"),
                plugins().wasm_bytes("rules-fraud"),
                409,
                "hook_mismatch",
            ),
            (
                hostile_manifest("says pricing, is fraud", "pricing"),
                plugins().wasm_bytes("rules-fraud"),
                422,
                "wrong_export",
            ),
            (
                hostile_manifest("runs away", "pricing"),
                plugins().wasm_bytes("memory-hog"),
                422,
                "smoke_failed",
            ),
            (
                hostile_manifest("reaches out", "pricing") + "[config]\nmode = \"file\"\n",
                plugins().wasm_bytes("sandbox-escape"),
                422,
                "smoke_failed",
            ),
        ];
        for (manifest, component, status, code) in cases {
            let r = host.upload(&manifest, component, true).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{manifest}: {}",
                r.body
            );
        }
        // A multipart body without the component, and JSON instead of multipart.
        let r = host
            .client
            .post(format!("{}/admin/plugins", host.base))
            .bearer_auth(ADMIN)
            .multipart(reqwest::multipart::Form::new().text("manifest", tiered("3.0.0", "1:1")))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 422);
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins",
                Some(json!({"manifest": "x"})),
            )
            .await;
        assert_eq!(r.status, 415, "{}", r.body);
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.0.0"));
        let (_, _, priced) = host.cart(4).await;
        assert_eq!(discount(&priced), 4 * 1999 * 5 / 100);

        // v2: 10 % from 3 units. Uploaded, then activated.
        let r = host
            .upload(&tiered("2.0.0", "3:1000"), wasm.clone(), false)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.0.0"));
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/activate",
                Some(json!({"version": "2.0.0"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["serving_here"]["version"], "2.0.0");
        let (_, _, priced) = host.cart(4).await;
        assert_eq!(discount(&priced), 4 * 1999 * 10 / 100);

        // Roll back to v1.
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/rollback",
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.body["active_version"].as_str()),
            (200, Some("1.0.0")),
            "{}",
            r.body
        );
        let (_, _, priced) = host.cart(4).await;
        assert_eq!(discount(&priced), 4 * 1999 * 5 / 100);

        // Operator configuration overrides the manifest's default without a new version.
        let r = host
            .admin(
                Method::PUT,
                "/admin/plugins/tiered-discount/config",
                Some(json!({"tiers": "2:2000"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (_, _, priced) = host.cart(4).await;
        assert_eq!(discount(&priced), 4 * 1999 * 20 / 100);
        let r = host
            .admin(
                Method::PUT,
                "/admin/plugins/tiered-discount/config",
                Some(json!({"tiers": 5})),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.body);

        // Disabled: carts are priced without it; enabled again: back.
        let r = host
            .admin(Method::POST, "/admin/plugins/tiered-discount/disable", None)
            .await;
        assert_eq!((r.status, r.body["enabled"].as_bool()), (200, Some(false)));
        assert_eq!(host.serving("tiered-discount"), None);
        let (_, _, priced) = host.cart(4).await;
        assert_eq!(discount(&priced), 0);
        let r = host
            .admin(Method::POST, "/admin/plugins/tiered-discount/enable", None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.0.0"));

        // Unknowns and capabilities.
        for (method, path, body, status, code) in [
            (
                Method::POST,
                "/admin/plugins/nope/activate",
                json!({"version": "1.0.0"}),
                404,
                "unknown_version",
            ),
            (
                Method::POST,
                "/admin/plugins/tiered-discount/activate",
                json!({"version": "7.7.7"}),
                404,
                "unknown_version",
            ),
            (
                Method::POST,
                "/admin/plugins/nope/rollback",
                Value::Null,
                404,
                "unknown_plugin",
            ),
            (
                Method::PUT,
                "/admin/plugins/tiered-discount/grants/filesystem",
                Value::Null,
                422,
                "unknown_capability",
            ),
            (
                Method::PUT,
                "/admin/hooks/shipping/order",
                json!({"plugins": []}),
                404,
                "unknown_hook",
            ),
            (
                Method::PUT,
                "/admin/hooks/pricing/order",
                json!({"plugins": ["nope"]}),
                422,
                "invalid",
            ),
        ] {
            let body = (!body.is_null()).then_some(body);
            let r = host.admin(method, path, body).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{path}: {}",
                r.body
            );
        }

        // Storefront credentials never reach the registry.
        let r = host.send(Method::GET, "/admin/plugins", &[], None).await;
        assert_eq!(r.status, 401);

        // The audit log says who did what, newest first.
        let r = host
            .admin(Method::GET, "/admin/plugins/tiered-discount/audit", None)
            .await;
        let actions: Vec<&str> = r.body["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        assert_eq!(
            actions,
            [
                "enable",
                "disable",
                "configure",
                "activate",
                "activate",
                "upload",
                "activate",
                "upload"
            ]
        );
        assert_eq!(r.body["entries"][0]["actor"], "admin:ops");
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_hooks_plugins_run_in_the_operators_order() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(0)).await;
        host.seed().await;
        // Two exclusive-free pricing plugins; the order shows in how the cart was priced.
        for (name, tiers) in [("tiers-a", "1:1000"), ("tiers-b", "1:500")] {
            let manifest = tiered("1.0.0", tiers)
                .replace("name = \"tiered-discount\"", &format!("name = \"{name}\""));
            let r = host
                .upload(&manifest, plugins().wasm_bytes("tiered-discount"), true)
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
        }
        let order = |host: &Host| -> Vec<String> {
            host.state
                .hook(cartridge_host::plugin::HookKind::Pricing)
                .iter()
                .map(|p| p.manifest().name.clone())
                .collect()
        };
        assert_eq!(order(&host), ["tiers-a", "tiers-b"]);
        let r = host
            .admin(
                Method::PUT,
                "/admin/hooks/pricing/order",
                Some(json!({"plugins": ["tiers-b", "tiers-a"]})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(order(&host), ["tiers-b", "tiers-a"]);
        let (_, _, priced) = host.cart(1).await;
        let first = priced["pricing"]["applied"][0]["plugin"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(first, "tiers-b@1.0.0", "{priced}");
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_hundred_swaps_under_checkout_load_fail_no_request_and_each_order_has_one_version() {
    for db in test_databases().await {
        let host = Arc::new(start_host(&db, None, config(0)).await);
        host.seed().await;
        // What is checked is which version priced each order, not the speed. The pricing
        // example's 20 ms deadline was missed here once on a loaded CI machine, while swaps
        // compiled next to the debug build's checkouts (the call skipped, fail-open); the
        // gateway's 50 ms was missed once in an API load test, and a missed gateway deadline
        // fails the checkout. Deadlines have tests of their own.
        let gateway = with_deadline(&plugins().manifest_text("test-gateway"), 2000);
        let r = host
            .upload(&gateway, plugins().wasm_bytes("test-gateway"), true)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let wasm = plugins().wasm_bytes("tiered-discount");
        for (version, tiers) in [("1.0.0", "1:500"), ("2.0.0", "1:1000")] {
            let manifest = with_deadline(&tiered(version, tiers), 2000);
            let r = host
                .upload(&manifest, wasm.clone(), version == "1.0.0")
                .await;
            assert!(r.status == 201, "{}", r.body);
        }

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut shoppers = Vec::new();
        for shopper in 0..4 {
            let host = host.clone();
            let stop = stop.clone();
            shoppers.push(tokio::spawn(async move {
                let mut orders = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let (cart, token, _) = host.cart(2).await;
                    let r = host
                        .checkout(&cart, &token, &format!("s{shopper}-{n}"))
                        .await;
                    assert_eq!(r.status, 201, "checkout failed during swaps: {}", r.body);
                    orders.push(r.body);
                }
                orders
            }));
        }
        for swap in 0..100 {
            let version = if swap % 2 == 0 { "2.0.0" } else { "1.0.0" };
            let r = host
                .admin(
                    Method::POST,
                    "/admin/plugins/tiered-discount/activate",
                    Some(json!({"version": version})),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seen = std::collections::BTreeSet::new();
        let mut count = 0;
        for shopper in shoppers {
            for order in shopper.await.expect("shopper") {
                count += 1;
                let priced_by = order["decisions"]["priced_by"]
                    .as_array()
                    .expect("priced_by");
                assert_eq!(priced_by.len(), 1, "{order}");
                let version = priced_by[0]["version"]
                    .as_str()
                    .expect("version")
                    .to_owned();
                // The discount is the one of the version that the order says priced it.
                let rate = if version == "1.0.0" { 5 } else { 10 };
                assert_eq!(
                    order["discount_total"].as_i64(),
                    Some(2 * 1999 * rate / 100),
                    "{order}"
                );
                seen.insert(version);
            }
        }
        assert!(count > 0, "no checkout ran during the swaps");
        eprintln!(
            "{}: {count} checkouts during 100 swaps, versions {seen:?}",
            db.backend
        );
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_request_that_started_on_the_old_version_finishes_on_it() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(0)).await;
        let wasm = plugins().wasm_bytes("tiered-discount");
        host.upload(&tiered("1.0.0", "1:500"), wasm.clone(), true)
            .await;
        let before = host.state.hook(cartridge_host::plugin::HookKind::Pricing);
        let r = host.upload(&tiered("2.0.0", "1:1000"), wasm, true).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let after = host.state.hook(cartridge_host::plugin::HookKind::Pricing);
        assert_eq!(after[0].manifest().version.to_string(), "2.0.0");
        // The set taken before the swap still answers, as v1.
        let cart = serde_json::from_str(
            &std::fs::read_to_string(plugins().fixture("tiered-discount", "cart.json"))
                .expect("fixture"),
        )
        .expect("cart");
        let outcome = cartridge_host::hooks::price(&before, &cart)
            .await
            .expect("old set");
        assert_eq!(outcome.decided_by[0].version.to_string(), "1.0.0");
        db.drop_database().await;
    }
}

#[tokio::test]
async fn three_hosts_on_one_database_serve_a_change_made_through_any_of_them() {
    for db in test_databases().await {
        let hosts = [
            start_host(&db, None, config(0)).await,
            start_host(&db, None, config(0)).await,
            start_host(&db, None, config(0)).await,
        ];
        let wasm = plugins().wasm_bytes("tiered-discount");
        let r = hosts[0]
            .upload(&tiered("1.0.0", "1:500"), wasm.clone(), true)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        for (i, host) in hosts.iter().enumerate() {
            eventually(&format!("host {i} serves 1.0.0"), async || {
                host.serving("tiered-discount").as_deref() == Some("1.0.0")
            })
            .await;
        }
        // A swap through the second host reaches the others; so does a rollback through the
        // third, and a disable through the first.
        let started = Instant::now();
        let r = hosts[1]
            .upload(&tiered("2.0.0", "1:1000"), wasm.clone(), true)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        for host in &hosts {
            eventually("2.0.0 everywhere", async || {
                host.serving("tiered-discount").as_deref() == Some("2.0.0")
            })
            .await;
        }
        eprintln!(
            "{}: swap served by all three hosts after {:?}",
            db.backend,
            started.elapsed()
        );
        let r = hosts[2]
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/rollback",
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for host in &hosts {
            eventually("rollback everywhere", async || {
                host.serving("tiered-discount").as_deref() == Some("1.0.0")
            })
            .await;
        }
        let r = hosts[0]
            .admin(Method::POST, "/admin/plugins/tiered-discount/disable", None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for host in &hosts {
            eventually("disabled everywhere", async || {
                host.serving("tiered-discount").is_none()
            })
            .await;
        }
        drop(hosts);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn the_watched_directory_installs_replaces_refuses_half_written_files_and_disables() {
    for db in test_databases().await {
        let dir = tempfile::tempdir().expect("tempdir");
        plugins().bundle_into("tiered-discount", dir.path());
        let host = start_host(&db, Some(dir.path()), config(0)).await;
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.0.0"));
        let watcher = PluginsDirectory::new(dir.path().to_owned(), host.state.registry().clone())
            .with_manifest_alone(Duration::from_secs(3));
        // The host above scanned once; this one follows changes from here on.
        let mut watcher = watcher;
        watcher.scan().await;
        let watch = tokio::spawn(watcher.watch(Duration::from_millis(100), Duration::from_secs(1)));

        // Replace with a new version: the manifest alone (new configuration), which goes live
        // once it has stayed alone for the hold.
        let bundle = dir.path().join("tiered-discount");
        std::fs::write(bundle.join("plugin.toml"), tiered("1.1.0", "1:500")).expect("write");
        eventually("1.1.0 installed from the directory", async || {
            host.serving("tiered-discount").as_deref() == Some("1.1.0")
        })
        .await;

        // A half-written component under a new version: refused, 1.1.0 keeps serving.
        let wasm = plugins().wasm_bytes("tiered-discount");
        std::fs::write(bundle.join("tiered-discount.wasm"), &wasm[..wasm.len() / 2])
            .expect("write");
        std::fs::write(bundle.join("plugin.toml"), tiered("1.2.0", "1:500")).expect("write");
        eventually("the refusal is audited", async || {
            let r = host
                .admin(Method::GET, "/admin/plugins/tiered-discount", None)
                .await;
            r.body["versions"].as_array().is_some_and(|v| v.len() == 2)
                && host.serving("tiered-discount").as_deref() == Some("1.1.0")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.1.0"));
        // The write completes: now 1.2.0 goes live.
        std::fs::write(bundle.join("tiered-discount.wasm"), &wasm).expect("write");
        eventually("1.2.0 once complete", async || {
            host.serving("tiered-discount").as_deref() == Some("1.2.0")
        })
        .await;

        // The manifest copied first, the component a moment later: the new version is not
        // stored with the old component in between, and goes live with its own.
        let mut new_wasm = wasm.clone();
        // A custom section (id 0, 7 bytes: a 6-byte name and no payload) makes other bytes of
        // the same component.
        new_wasm.extend_from_slice(b"\x00\x07\x06build2");
        std::fs::write(bundle.join("plugin.toml"), tiered("1.3.0", "1:500")).expect("write");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.2.0"));
        assert_eq!(
            host.stored_digest("tiered-discount", "1.3.0").await,
            None,
            "1.3.0 stored before its component came"
        );
        std::fs::write(bundle.join("tiered-discount.wasm"), &new_wasm).expect("write");
        eventually("1.3.0 with its own component", async || {
            host.serving("tiered-discount").as_deref() == Some("1.3.0")
        })
        .await;
        assert_eq!(
            host.stored_digest("tiered-discount", "1.3.0").await,
            Some(sha256_hex(&new_wasm))
        );

        // A manifest that names its component's digest, copied first: refused while the old
        // component is beside it — also after the hold above would have run out — and live
        // once its own component is there.
        let mut pinned_wasm = wasm.clone();
        pinned_wasm.extend_from_slice(b"\x00\x07\x06build3");
        let pinned = format!(
            "component-sha256 = \"{}\"\n{}",
            sha256_hex(&pinned_wasm),
            tiered("1.4.0", "1:500")
        );
        std::fs::write(bundle.join("plugin.toml"), pinned).expect("write");
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.3.0"));
        assert_eq!(
            host.stored_digest("tiered-discount", "1.4.0").await,
            None,
            "1.4.0 stored with another component"
        );
        std::fs::write(bundle.join("tiered-discount.wasm"), &pinned_wasm).expect("write");
        eventually("1.4.0 with the component it names", async || {
            host.serving("tiered-discount").as_deref() == Some("1.4.0")
        })
        .await;
        assert_eq!(
            host.stored_digest("tiered-discount", "1.4.0").await,
            Some(sha256_hex(&pinned_wasm))
        );

        // A second plugin dropped in; then the first removed.
        plugins().bundle_into("coupon-promotions", dir.path());
        eventually("coupons installed", async || {
            host.serving("coupon-promotions").is_some()
        })
        .await;
        std::fs::remove_dir_all(&bundle).expect("remove");
        eventually("removal disables", async || {
            host.serving("tiered-discount").is_none()
        })
        .await;
        let r = host
            .admin(Method::GET, "/admin/plugins/tiered-discount/audit", None)
            .await;
        assert_eq!(r.body["entries"][0]["action"], "disable");
        assert_eq!(r.body["entries"][0]["actor"], "plugins-directory");
        // Put back, the same files serve again.
        std::fs::create_dir_all(&bundle).expect("mkdir");
        std::fs::write(bundle.join("tiered-discount.wasm"), &wasm).expect("write");
        std::fs::write(bundle.join("plugin.toml"), tiered("1.2.0", "1:500")).expect("write");
        eventually("put back, served again", async || {
            host.serving("tiered-discount").as_deref() == Some("1.2.0")
        })
        .await;
        watch.abort();
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_crash_looping_plugin_is_switched_off_and_its_policy_applies_meanwhile() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(3)).await;
        host.seed().await;
        for name in ["tiered-discount", "panicker", "rules-fraud", "test-gateway"] {
            let r = host
                .upload(
                    &plugins().manifest_text(name),
                    plugins().wasm_bytes(name),
                    true,
                )
                .await;
            assert_eq!(r.status, 201, "{name}: {}", r.body);
        }
        // The panicker (pricing, fail-open) crashes on every real cart: three in a row trip it.
        for _ in 0..3 {
            let (_, _, priced) = host.cart(3).await;
            assert_eq!(discount(&priced), 3 * 1999 * 5 / 100, "{priced}");
        }
        eventually("the trip is recorded", async || {
            let r = host
                .admin(Method::GET, "/admin/plugins/panicker", None)
                .await;
            r.body["tripped_at"].is_i64() && r.body["serving_here"]["tripped"] == true
        })
        .await;
        // Meanwhile: not called, fail-open applies, carts still price, checkouts still work.
        let (cart, token, priced) = host.cart(3).await;
        assert_eq!(
            priced["skipped_plugins"][0]["code"], "plugin_disabled",
            "{priced}"
        );
        let r = host.checkout(&cart, &token, "after-trip").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = host
            .admin(Method::GET, "/admin/plugins/panicker/audit", None)
            .await;
        assert_eq!(r.body["entries"][0]["action"], "trip");
        assert_eq!(r.body["entries"][0]["actor"], "crash-loop breaker");
        let metrics = host
            .client
            .get(format!("{}/metrics", host.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("cartridge_plugin_crash_loop_trips_total{plugin=\"panicker\""),
            "{metrics}"
        );
        // An operator enables it again: it is called again (and fails again).
        let r = host
            .admin(Method::POST, "/admin/plugins/panicker/enable", None)
            .await;
        assert_eq!(
            (r.status, r.body["tripped_at"].is_null()),
            (200, true),
            "{}",
            r.body
        );
        let (_, _, priced) = host.cart(3).await;
        assert_eq!(priced["skipped_plugins"][0]["code"], "trap", "{priced}");
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_tripped_fail_closed_fraud_plugin_stops_checkouts_until_fixed() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(2)).await;
        host.seed().await;
        for name in ["panicking-fraud", "test-gateway"] {
            let r = host
                .upload(
                    &plugins().manifest_text(name),
                    plugins().wasm_bytes(name),
                    true,
                )
                .await;
            assert_eq!(r.status, 201, "{name}: {}", r.body);
        }
        for n in 0..4 {
            let (cart, token, _) = host.cart(1).await;
            let r = host.checkout(&cart, &token, &format!("k{n}")).await;
            assert_eq!(r.status, 502, "{}", r.body);
            let code = r.body["error"]["code"].as_str().expect("code");
            // Two crashes, then the breaker answers for it: the checkout is still refused.
            assert_eq!(
                code,
                if n < 2 { "trap" } else { "plugin_disabled" },
                "{}",
                r.body
            );
        }
        let r = host.admin(Method::GET, "/admin/inventory/TEE", None).await;
        assert_eq!(r.body["levels"][0]["reserved"], 0, "{}", r.body);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_shadow_run_shows_where_a_candidate_would_price_differently() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(0)).await;
        host.seed().await;
        let wasm = plugins().wasm_bytes("tiered-discount");
        let r = host
            .upload(&tiered("1.0.0", "3:500"), wasm.clone(), true)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        // Real traffic: carts of 1, 2, 3 and 4 tees.
        for quantity in 1..=4 {
            host.cart(quantity).await;
        }
        host.calls_logged("tiered-discount", 8).await;
        // A logged input that no longer fits the hook's input is left out, not "identical".
        sqlx::query(
            "INSERT INTO plugin_calls (plugin_name, version, hook, at, input, duration_us) \
             VALUES ('tiered-discount', '1.0.0', 'pricing', 0, '{\"not\": \"a cart\"}', 0)",
        )
        .execute(host.state.registry().db().pool())
        .await
        .expect("insert");
        // A candidate with a second tier from 4 units: only the 4-tee carts change.
        let r = host
            .upload(&tiered("2.0.0", "3:500,4:1000"), wasm.clone(), false)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/versions/2.0.0/replay",
                Some(json!({"last": 1000})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let report = &r.body;
        assert_eq!(report["candidate"], "tiered-discount@2.0.0");
        assert_eq!(report["baseline"], "tiered-discount@1.0.0");
        assert_eq!(report["skipped"], 1, "{report}");
        let compared = report["compared"].as_u64().expect("compared");
        let differed = report["differed"].as_u64().expect("differed");
        assert!(compared >= 8, "{report}");
        assert!(differed >= 1 && differed < compared, "{report}");
        for d in report["differences"].as_array().expect("differences") {
            let quantities: Vec<u64> = d["input"]["lines"]
                .as_array()
                .expect("lines")
                .iter()
                .filter_map(|l| l["quantity"].as_u64())
                .collect();
            assert_eq!(quantities, [4], "{d}");
        }
        // Nothing changed for shoppers; the replay itself was not logged.
        assert_eq!(host.serving("tiered-discount").as_deref(), Some("1.0.0"));
        let r = host
            .admin(
                Method::GET,
                "/admin/plugins/tiered-discount/calls?limit=200",
                None,
            )
            .await;
        assert!(
            r.body["calls"]
                .as_array()
                .expect("calls")
                .iter()
                .all(|c| c["version"] == "1.0.0")
        );
        // Same version against itself: no difference.
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/versions/1.0.0/replay",
                None,
            )
            .await;
        assert_eq!(r.body["differed"], 0, "{}", r.body);
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/versions/9.9.9/replay",
                None,
            )
            .await;
        assert_eq!(r.status, 404);
        for (body, status, code) in [
            ("{", 400, "malformed_json"),
            ("{\"last\": -1}", 422, "invalid_input"),
        ] {
            let r = host
                .client
                .post(format!(
                    "{}/admin/plugins/tiered-discount/versions/1.0.0/replay",
                    host.base
                ))
                .bearer_auth(ADMIN)
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status().as_u16(), status, "{body}");
            let answer: Value = r.json().await.expect("a JSON error");
            assert_eq!(answer["error"]["code"], code, "{body}");
        }
        db.drop_database().await;
    }
}

/// A cart with no lines, for calling a pricing plugin directly.
fn empty_cart() -> cartridge_host::plugin::bindings::pricing::Cart {
    serde_json::from_value(json!({
        "id": "c", "currency": "EUR", "lines": [], "customer": null,
        "coupon_codes": [], "shipping": null, "now": 0
    }))
    .expect("cart")
}

#[tokio::test]
async fn capabilities_need_an_operators_grant_and_secrets_are_only_references() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(0)).await;
        host.seed().await;
        // Validation reaches nothing: the smoke call runs before any grant, with none.
        let reaching = plugins()
            .manifest_text("http-probe")
            .replace("version = \"0.1.0\"", "version = \"0.0.1\"")
            + "\n[config]\nurl = \"http://127.0.0.1:9/\"\n";
        let r = host
            .upload(&reaching, plugins().wasm_bytes("http-probe"), false)
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("smoke_failed")),
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("capability denied: http to 127.0.0.1:9")),
            "{}",
            r.body
        );
        let manifest = plugins().manifest_text("http-probe");
        let r = host
            .upload(&manifest, plugins().wasm_bytes("http-probe"), true)
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("capability_not_granted")),
            "{}",
            r.body
        );
        assert_eq!(host.serving("http-probe"), None);
        for capability in ["http:127.0.0.1", "secrets"] {
            let r = host
                .admin(
                    Method::PUT,
                    &format!("/admin/plugins/http-probe/grants/{capability}"),
                    None,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/http-probe/activate",
                Some(json!({"version": "0.1.0"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["grants"], json!(["http:127.0.0.1", "secrets"]));

        // A secret is stored as where to find it; the API shows its name only.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "sk_live_do_not_leak").expect("write");
        let r = host
            .admin(
                Method::PUT,
                "/admin/plugins/http-probe/secrets/api-key",
                Some(json!({"file": path.display().to_string()})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["secrets"], json!(["api-key"]));
        for bad in [
            json!({"value": "sk_live"}),
            json!("sk_live"),
            json!({"env": 5}),
            json!({"env": "CARTRIDGE_DATABASE_URL"}),
            json!({"file": "/etc/passwd"}),
            json!({"file": format!("{}/../../etc/passwd", std::env::temp_dir().display())}),
        ] {
            let r = host
                .admin(
                    Method::PUT,
                    "/admin/plugins/http-probe/secrets/api-key",
                    Some(bad),
                )
                .await;
            assert_eq!(r.status, 422, "{}", r.body);
        }
        let r = host
            .admin(
                Method::PUT,
                "/admin/plugins/http-probe/config",
                Some(json!({"secret": "api-key", "answer": "log"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let plugin = host.state.plugin("http-probe").expect("serving");
        let call = plugin.price(&empty_cart()).await.expect("answers");
        let logged: Vec<&str> = call.stats.logs.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(logged, ["the secret is [secret]", "secret-length=19"]);
        let everything = host
            .admin(Method::GET, "/admin/plugins/http-probe", None)
            .await
            .body
            .to_string()
            + &host
                .admin(Method::GET, "/admin/plugins/http-probe/audit", None)
                .await
                .body
                .to_string()
            + &host
                .admin(Method::GET, "/admin/plugins/http-probe/calls", None)
                .await
                .body
                .to_string();
        assert!(!everything.contains("sk_live_do_not_leak"), "{everything}");

        // Revoked: the next call that reaches for it is stopped.
        let r = host
            .admin(
                Method::DELETE,
                "/admin/plugins/http-probe/grants/secrets",
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let plugin = host.state.plugin("http-probe").expect("serving");
        let err = plugin.price(&empty_cart()).await.expect_err("denied");
        assert_eq!(err.code(), "capability_denied");
        db.drop_database().await;
    }
}

/// Checks that `r` succeeded and that its body matches the schema `/openapi.json` gives the
/// answer of `method path` (with the JSON Schema validator schemathesis uses; skipped when
/// schemathesis is not installed).
fn conforms(document: &Value, method: &str, path: &str, r: &Response) {
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    let schema = document["paths"][path][method]["responses"]["2XX"]["content"]["application/json"]
        ["schema"]["$ref"]
        .as_str()
        .and_then(|to| to.strip_prefix("#/components/schemas/"))
        .unwrap_or_else(|| panic!("{method} {path}: the document gives its answer no schema"));
    if let Some(Err(violations)) =
        cartridge_tests::schemathesis::validate(document, schema, &r.body)
    {
        panic!(
            "{method} {path} does not match {schema}:\n{violations}\n{}",
            r.body
        );
    }
}

/// Every route of the registry (`/admin/plugins…`, `/admin/hooks/…`) answers what the
/// document says it does: each is called on a real host, with the plugin in the states that
/// make its optional parts null or not (served or disabled, a call log with a failed call, a
/// shadow run with differences, invocations of three hooks).
#[tokio::test]
async fn every_registry_answer_matches_the_schema_the_openapi_document_gives_it() {
    for db in test_databases().await {
        let host = start_host(&db, None, config(0)).await;
        host.seed().await;
        let document = host
            .send(Method::GET, "/openapi.json", &[], None)
            .await
            .body;
        let mut walked: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut check = |method: &'static str, path: &'static str, r: &Response| {
            conforms(&document, method, path, r);
            walked.insert((method, path));
        };
        let admin = |method: &str| {
            Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("a method")
        };

        // Uploads: one activated, one only stored; a fail-open plugin that always fails, a
        // fraud plugin and a payment connector.
        let wasm = plugins().wasm_bytes("tiered-discount");
        let r = host
            .upload(&tiered("1.0.0", "3:500"), wasm.clone(), true)
            .await;
        check("post", "/admin/plugins", &r);
        let r = host.upload(&tiered("2.0.0", "3:1000"), wasm, false).await;
        check("post", "/admin/plugins", &r);
        assert_eq!(r.body["plugin"]["serving_here"]["version"], "1.0.0");
        for name in ["panicker", "rules-fraud", "test-gateway"] {
            let r = host
                .upload(
                    &plugins().manifest_text(name),
                    plugins().wasm_bytes(name),
                    true,
                )
                .await;
            check("post", "/admin/plugins", &r);
        }
        let r = host.admin(Method::GET, "/admin/plugins", None).await;
        check("get", "/admin/plugins", &r);
        assert_eq!(r.body["plugins"].as_array().map(Vec::len), Some(4));
        let r = host
            .admin(Method::GET, "/admin/plugins/tiered-discount", None)
            .await;
        check("get", "/admin/plugins/{name}", &r);

        // Real traffic, logged: the panicker's calls hold an error and no output.
        for quantity in [1, 4] {
            host.cart(quantity).await;
        }
        host.calls_logged("panicker", 2).await;
        for name in ["tiered-discount", "panicker"] {
            let r = host
                .admin(Method::GET, &format!("/admin/plugins/{name}/calls"), None)
                .await;
            check("get", "/admin/plugins/{name}/calls", &r);
            let failed = r.body["calls"][0]["error"].is_string();
            assert_eq!(failed, name == "panicker", "{}", r.body);
            assert_eq!(r.body["calls"][0]["output"].is_null(), failed, "{}", r.body);
        }
        let r = host
            .admin(
                Method::POST,
                "/admin/plugins/tiered-discount/versions/2.0.0/replay",
                Some(json!({"last": 10})),
            )
            .await;
        check(
            "post",
            "/admin/plugins/{name}/versions/{version}/replay",
            &r,
        );
        assert!(r.body["differed"].as_u64() >= Some(1), "{}", r.body);

        // Every change an operator makes answers with the plugin as it is afterwards.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key");
        std::fs::write(&key, "not shown").expect("write");
        for (method, path, body) in [
            (
                "post",
                "/admin/plugins/{name}/activate",
                Some(json!({"version": "2.0.0"})),
            ),
            ("post", "/admin/plugins/{name}/rollback", None),
            (
                "put",
                "/admin/plugins/{name}/config",
                Some(json!({"tiers": "2:2000"})),
            ),
            ("put", "/admin/plugins/{name}/grants/{capability}", None),
            ("delete", "/admin/plugins/{name}/grants/{capability}", None),
            (
                "put",
                "/admin/plugins/{name}/secrets/{secret}",
                Some(json!({"file": key.display().to_string()})),
            ),
            ("delete", "/admin/plugins/{name}/secrets/{secret}", None),
            ("post", "/admin/plugins/{name}/disable", None),
            ("post", "/admin/plugins/{name}/enable", None),
        ] {
            let concrete = path
                .replace("{name}", "tiered-discount")
                .replace("{capability}", "secrets")
                .replace("{secret}", "api-key");
            let r = host.admin(admin(method), &concrete, body).await;
            check(method, path, &r);
            if path.ends_with("/disable") {
                assert!(r.body["serving_here"].is_null(), "{}", r.body);
            }
        }
        let r = host
            .admin(
                Method::PUT,
                "/admin/hooks/pricing/order",
                Some(json!({"plugins": ["panicker", "tiered-discount"]})),
            )
            .await;
        check("put", "/admin/hooks/{hook}/order", &r);

        // Invocations of a pricing plugin (with the priced cart), a fraud plugin and a
        // payment connector (without).
        for (name, fixture) in [
            ("tiered-discount", "cart.json"),
            ("rules-fraud", "checkout.json"),
            ("test-gateway", "authorize.json"),
        ] {
            let input: Value = serde_json::from_str(
                &std::fs::read_to_string(plugins().fixture(name, fixture)).expect("fixture"),
            )
            .expect("json");
            let r = host
                .admin(
                    Method::POST,
                    &format!("/admin/plugins/{name}/invoke"),
                    Some(input),
                )
                .await;
            check("post", "/admin/plugins/{name}/invoke", &r);
            assert_eq!(
                r.body["priced"].is_null(),
                name != "tiered-discount",
                "{}",
                r.body
            );
        }

        // The audit log holds an entry of each kind above.
        let r = host
            .admin(Method::GET, "/admin/plugins/tiered-discount/audit", None)
            .await;
        check("get", "/admin/plugins/{name}/audit", &r);
        assert!(
            r.body["entries"].as_array().map(Vec::len) >= Some(10),
            "{}",
            r.body
        );

        let registry: BTreeSet<(&str, &str)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .filter(|(path, _)| {
                path.starts_with("/admin/plugins") || path.starts_with("/admin/hooks/")
            })
            .flat_map(|(path, methods)| {
                methods
                    .as_object()
                    .expect("methods")
                    .keys()
                    .map(move |method| (method.as_str(), path.as_str()))
            })
            .collect();
        assert_eq!(walked, registry, "routes of the registry not walked");
        db.drop_database().await;
    }
}
