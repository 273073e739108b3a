//! The HTTP API end to end: the real application on port 0, a fresh database per test (SQLite
//! always, PostgreSQL when configured), real plugins built from `plugins/`.

use std::net::SocketAddr;

use cartridge_host::api::AppState;
use cartridge_host::db::Db;
use cartridge_host::plugin::{Runtime, RuntimeConfig};
use cartridge_host::registry::RegistryConfig;
use cartridge_host::server::{Application, open_registry};
use cartridge_tests::{TestDatabase, plugins, test_databases, with_deadline};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "adm_test_token";
const METRICS: &str = "mtr_test_token";

struct TestApp {
    base: String,
    client: reqwest::Client,
    db: TestDatabase,
    _plugins: tempfile::TempDir,
}

struct Response {
    status: u16,
    body: Value,
}

async fn spawn_app(db: TestDatabase, installed: &[&str]) -> TestApp {
    spawn_app_with(db, installed, None).await
}

/// [`spawn_app`] for the tests that load the host with concurrent checkouts or refunds to
/// check stock and idempotency: every plugin may take 5 s. The examples allow 20–50 ms, which
/// the debug build on a loaded CI machine missed (the 200 shoppers' fail-closed fraud hook
/// answered 502 `deadline_exceeded` once on PostgreSQL) — a verdict on the machine's speed, not
/// on what these tests check. Deadlines themselves are tested on their own.
async fn spawn_unhurried_app(db: TestDatabase, installed: &[&str]) -> TestApp {
    spawn_app_with(db, installed, Some(5_000)).await
}

async fn spawn_app_with(db: TestDatabase, installed: &[&str], deadline_ms: Option<u32>) -> TestApp {
    spawn_app_configured(db, installed, deadline_ms, RegistryConfig::default()).await
}

/// [`spawn_app`] whose call log (`/admin/plugins/{name}/calls`) keeps every hook call, not
/// one in ten: what a plugin was given can be read back.
async fn spawn_app_logging_every_call(db: TestDatabase, installed: &[&str]) -> TestApp {
    let mut config = RegistryConfig::default();
    config.watch.sample_every = 1;
    spawn_app_configured(db, installed, None, config).await
}

async fn spawn_app_configured(
    db: TestDatabase,
    installed: &[&str],
    deadline_ms: Option<u32>,
    config: RegistryConfig,
) -> TestApp {
    cartridge_tests::log_slow_database_waits();
    let dir = tempfile::tempdir().expect("tempdir");
    for name in installed {
        let bundle = plugins().bundle_into(name, dir.path());
        if let Some(ms) = deadline_ms {
            let path = bundle.join("plugin.toml");
            let manifest = std::fs::read_to_string(&path).expect("manifest");
            std::fs::write(&path, with_deadline(&manifest, ms)).expect("write manifest");
        }
    }
    // A broken bundle must not stop the others from loading.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("plugin.toml"), "name = \"broken\"").expect("write");

    let runtime = Runtime::new(RuntimeConfig {
        // More than the 200 shoppers of the last-unit test can hold at once: a call whose
        // instance yields (every epoch tick) keeps its slot while the others start theirs, and
        // on a loaded machine 32 slots ran out (502 `unavailable`).
        max_instances: 256,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let pool = Db::connect(&db.url).await.expect("connect");
    pool.migrate().await.expect("migrate");
    let (registry, _directory) = open_registry(
        pool.clone(),
        std::sync::Arc::new(runtime),
        config,
        Some(dir.path()),
    )
    .await
    .expect("registry");
    registry.spawn();
    let state = AppState::new(pool, registry).with_metrics_token(METRICS);
    state.add_admin_token("test", ADMIN).await.expect("token");
    let app = Application::build(SocketAddr::from(([127, 0, 0, 1], 0)), state)
        .await
        .expect("bind");
    let addr = app.local_addr().expect("addr");
    tokio::spawn(app.run());
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        db,
        _plugins: dir,
    }
}

impl TestApp {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Response {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let r = req.send().await.expect("request");
        Response {
            status: r.status().as_u16(),
            body: r.json().await.unwrap_or(Value::Null),
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Response {
        let body = (method != Method::GET).then(|| body.to_string());
        self.send(
            method,
            path,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            body,
        )
        .await
    }

    /// The signed-in customer's orders, `auth` being their `Authorization` header.
    async fn my_orders(&self, auth: &str) -> Response {
        self.send(
            Method::GET,
            "/store/customers/me/orders",
            &[("authorization", auth)],
            None,
        )
        .await
    }

    /// Adds `quantity` of `sku` to a cart, with its token.
    async fn add_line(&self, cart: &str, token: &str, sku: &str, quantity: u32) -> Response {
        self.cart(
            Method::POST,
            &format!("/store/carts/{cart}/lines"),
            token,
            Some(json!({"sku": sku, "quantity": quantity})),
        )
        .await
    }

    async fn cart(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Response {
        self.send(
            method,
            path,
            &[("x-cart-token", token)],
            body.map(|b| b.to_string()),
        )
        .await
    }

    /// A small catalog: a tee in two sizes (EUR 19.99) in "apparel/shirts", socks, 10 of each
    /// in stock.
    async fn seed(&self) -> String {
        for (id, parent) in [("apparel", None), ("shirts", Some("apparel"))] {
            let r = self
                .admin(
                    Method::POST,
                    "/admin/categories",
                    json!({"id": id, "name": id, "parent": parent}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let r = self
            .admin(
                Method::POST,
                "/admin/locations",
                json!({"id": "eu", "name": "Berlin", "priority": 1}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/admin/products",
                json!({
                    "title": "Organic Tee",
                    "categories": ["shirts"],
                    "attributes": {"material": "cotton"},
                    "variants": [
                        {"sku": "TEE-M", "title": "M", "options": {"size": "M"}, "prices": {"EUR": 1999}},
                        {"sku": "TEE-L", "title": "L", "options": {"size": "L"}, "prices": {"EUR": 1999}}
                    ]
                }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let tee = r.body["id"].as_str().expect("id").to_owned();
        let r = self
            .admin(
                Method::POST,
                "/admin/products",
                json!({"title": "Wool Socks", "attributes": {"material": "wool"},
                       "variants": [{"sku": "SOCK", "title": "One size", "prices": {"EUR": 500, "USD": 600}}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        for sku in ["TEE-M", "TEE-L", "SOCK"] {
            let r = self
                .admin(
                    Method::POST,
                    &format!("/admin/inventory/{sku}/eu/adjust"),
                    json!({"delta": 10, "reason": "receive"}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        tee
    }

    async fn new_cart(&self) -> (String, String) {
        let r = self.create_cart().await;
        assert_eq!(r.status, 201, "{}", r.body);
        (
            r.body["id"].as_str().expect("id").to_owned(),
            r.body["token"].as_str().expect("token").to_owned(),
        )
    }

    /// Creates a EUR cart with no owner: the answer.
    async fn create_cart(&self) -> Response {
        self.send(
            Method::POST,
            "/store/carts",
            &[],
            Some(json!({"currency": "EUR"}).to_string()),
        )
        .await
    }
}

#[tokio::test]
async fn health_readiness_and_plugins_are_served() {
    for db in test_databases().await {
        let app = spawn_app(db, &["tiered-discount", "loop-forever"]).await;
        assert_eq!(
            app.send(Method::GET, "/health", &[], None).await.status,
            200
        );
        assert_eq!(app.send(Method::GET, "/ready", &[], None).await.status, 200);
        let r = app.admin(Method::GET, "/admin/plugins", Value::Null).await;
        let names: Vec<&str> = r.body["plugins"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, vec!["loop-forever", "tiered-discount"]);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn the_catalog_is_managed_by_admins_and_browsed_by_shoppers() {
    for db in test_databases().await {
        let app = spawn_app(db, &[]).await;
        let tee = app.seed().await;
        let list = |query: &'static str| {
            let app = &app;
            async move {
                let r = app
                    .send(Method::GET, &format!("/store/products{query}"), &[], None)
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                r.body["products"]
                    .as_array()
                    .expect("list")
                    .iter()
                    .map(|p| p["title"].as_str().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list("").await, vec!["Wool Socks", "Organic Tee"]);
        assert_eq!(
            list("?category=apparel").await,
            vec!["Organic Tee"],
            "subcategories count"
        );
        assert_eq!(list("?q=SOCK").await, vec!["Wool Socks"]);
        assert_eq!(
            list("?attribute=material:cotton").await,
            vec!["Organic Tee"]
        );
        assert_eq!(list("?limit=1&offset=1").await, vec!["Organic Tee"]);

        let r = app
            .send(Method::GET, &format!("/store/products/{tee}"), &[], None)
            .await;
        assert_eq!(r.body["variants"][0]["prices"]["EUR"], 1999);

        let r = app
            .admin(
                Method::POST,
                &format!("/admin/products/{tee}/archive"),
                Value::Null,
            )
            .await;
        assert_eq!(r.body["status"], "archived");
        assert_eq!(
            list("").await,
            vec!["Wool Socks"],
            "archived products leave the store"
        );
        let r = app
            .send(Method::GET, &format!("/store/products/{tee}"), &[], None)
            .await;
        assert_eq!(r.status, 404);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_cart_is_priced_by_the_active_pricing_plugins() {
    for db in test_databases().await {
        let app = spawn_app(db, &["tiered-discount", "coupon-promotions"]).await;
        app.seed().await;
        let (cart, token) = app.new_cart().await;
        let path = format!("/store/carts/{cart}/lines");
        let r = app
            .cart(
                Method::POST,
                &path,
                &token,
                Some(json!({"sku": "TEE-M", "quantity": 3})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        // tiered-discount: 5 % off 3 or more.
        assert_eq!(r.body["pricing"]["subtotal"], 5997);
        assert_eq!(r.body["pricing"]["line_discounts"], 299);
        let r = app
            .cart(
                Method::POST,
                &path,
                &token,
                Some(json!({"sku": "SOCK", "quantity": 1})),
            )
            .await;
        let sock_line = r.body["lines"][1]["id"].as_str().expect("line").to_owned();
        let r = app
            .cart(
                Method::PUT,
                &format!("/store/carts/{cart}/coupons"),
                &token,
                Some(json!({"codes": ["welcome10"]})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["coupon_codes"], json!(["WELCOME10"]));
        let applied = r.body["pricing"]["applied"].as_array().expect("applied");
        assert!(
            applied.iter().any(|a| a["code"] == "WELCOME10"),
            "{applied:?}"
        );
        assert_eq!(r.body["priced_by"].as_array().map(Vec::len), Some(2));

        let r = app
            .cart(
                Method::PATCH,
                &format!("/store/carts/{cart}/lines/{sock_line}"),
                &token,
                Some(json!({"quantity": 2})),
            )
            .await;
        assert_eq!(r.body["lines"][1]["quantity"], 2);
        let r = app
            .cart(
                Method::DELETE,
                &format!("/store/carts/{cart}/lines/{sock_line}"),
                &token,
                None,
            )
            .await;
        assert_eq!(r.body["lines"].as_array().map(Vec::len), Some(1));
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_cart_takes_only_what_is_for_sale_and_at_most_a_hundred_lines() {
    for db in test_databases().await {
        let app = spawn_app(db, &[]).await;
        app.seed().await;
        let variants: Vec<Value> = (0..99)
            .map(|i| json!({"sku": format!("BULK-{i:03}"), "title": format!("{i}"), "options": {"n": format!("{i}")}, "prices": {"EUR": 100}}))
            .chain([json!({"sku": "USD-ONLY", "title": "usd", "options": {"n": "usd"}, "prices": {"USD": 100}})])
            .collect();
        let r = app
            .admin(
                Method::POST,
                "/admin/products",
                json!({"title": "Bulk", "variants": variants}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let bulk = r.body["id"].as_str().expect("id").to_owned();

        let (cart, token) = app.cart_with("TEE-M", 1).await;
        let add = |sku: String| {
            let (app, cart, token) = (&app, cart.clone(), token.clone());
            async move {
                app.cart(
                    Method::POST,
                    &format!("/store/carts/{cart}/lines"),
                    &token,
                    Some(json!({"sku": sku, "quantity": 1})),
                )
                .await
            }
        };
        // Priced only in another currency: not for sale in this (EUR) cart.
        let r = add("USD-ONLY".into()).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("not_for_sale")),
            "{}",
            r.body
        );
        for i in 0..99 {
            let r = add(format!("BULK-{i:03}")).await;
            assert_eq!(r.status, 200, "line {i}: {}", r.body);
        }
        // 100 lines: no 101st, but more of a line already there is fine.
        let r = add("TEE-L".into()).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("invalid_input")),
            "{}",
            r.body
        );
        let r = add("BULK-042".into()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["lines"].as_array().map(Vec::len), Some(100));

        // An archived product's SKUs are no longer for sale.
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/products/{bulk}/archive"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (other, other_token) = app.cart_with("TEE-M", 1).await;
        let r = app
            .cart(
                Method::POST,
                &format!("/store/carts/{other}/lines"),
                &other_token,
                Some(json!({"sku": "BULK-001", "quantity": 1})),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("not_for_sale")),
            "{}",
            r.body
        );
        // Unknown cart: not found, whatever the SKU.
        let r = app
            .cart(
                Method::POST,
                "/store/carts/no-such-cart/lines",
                &other_token,
                Some(json!({"sku": "TEE-M", "quantity": 1})),
            )
            .await;
        assert!(
            matches!(r.status, 401 | 403 | 404),
            "{} {}",
            r.status,
            r.body
        );
    }
}

#[tokio::test]
async fn a_failing_fail_open_pricing_plugin_does_not_break_the_cart() {
    for db in test_databases().await {
        let app = spawn_app(db, &["panicker", "tiered-discount"]).await;
        app.seed().await;
        let (cart, token) = app.new_cart().await;
        let r = app.add_line(&cart, &token, "TEE-M", 3).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["pricing"]["line_discounts"], 299);
        assert_eq!(r.body["skipped_plugins"][0]["code"], "trap");
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn carts_and_admin_routes_open_only_with_the_right_credential() {
    for db in test_databases().await {
        let app = spawn_app(db, &["tiered-discount"]).await;
        let tee = app.seed().await;
        let (cart, token) = app.new_cart().await;
        let (other_cart, other_token) = app.new_cart().await;
        let r = app.add_line(&cart, &token, "TEE-M", 1).await;
        let line = r.body["lines"][0]["id"].as_str().expect("line").to_owned();

        // Another cart's token, no token, a made-up cart: all look like "no such cart".
        for (path, tok) in [
            (format!("/store/carts/{cart}"), other_token.as_str()),
            (format!("/store/carts/{cart}"), ""),
            (format!("/store/carts/{other_cart}"), token.as_str()),
            (
                "/store/carts/00000000-0000-0000-0000-000000000000".to_owned(),
                token.as_str(),
            ),
        ] {
            let r = app.cart(Method::GET, &path, tok, None).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (404, Some("cart_not_found")),
                "{path}"
            );
        }
        // Every cart route (as the OpenAPI document lists them) opens no cart with another
        // cart's token.
        for (method, path) in cartridge_host::api::openapi::documented_routes()
            .filter(|(_, path)| path.starts_with("/store/carts/{id}"))
        {
            let path = path.replace("{id}", &cart).replace("{line}", &line);
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let r = app
                .cart(method.clone(), &path, &other_token, Some(json!({})))
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (404, Some("cart_not_found")),
                "{method} {path}: {}",
                r.body
            );
        }
        // Well-formed requests with bad values are refused only once the cart is open: to
        // another cart's token, the cart is not there at all.
        for (method, path, body) in [
            (
                Method::POST,
                format!("/store/carts/{cart}/lines"),
                json!({"sku": "TEE-M", "quantity": 0}),
            ),
            (
                Method::PATCH,
                format!("/store/carts/{cart}/lines/{line}"),
                json!({"quantity": -1}),
            ),
            (
                Method::PUT,
                format!("/store/carts/{cart}/coupons"),
                json!({"codes": ["not a code!"]}),
            ),
            (
                Method::PUT,
                format!("/store/carts/{cart}/details"),
                json!({"email": "nope"}),
            ),
            (
                Method::PUT,
                format!("/store/carts/{cart}/shipping-method"),
                json!({"code": "no such code!"}),
            ),
        ] {
            let r = app
                .cart(method.clone(), &path, &other_token, Some(body.clone()))
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (404, Some("cart_not_found")),
                "{method} {path} {body}: {}",
                r.body
            );
            let r = app.cart(method.clone(), &path, &token, Some(body)).await;
            assert_eq!(r.status, 422, "{method} {path}: {}", r.body);
        }
        // Changing a line of this cart through another cart's id and token does nothing.
        let r = app
            .cart(
                Method::DELETE,
                &format!("/store/carts/{other_cart}/lines/{line}"),
                &other_token,
                None,
            )
            .await;
        assert_eq!(r.status, 404);
        let r = app
            .cart(Method::GET, &format!("/store/carts/{cart}"), &token, None)
            .await;
        assert_eq!(
            r.body["lines"].as_array().map(Vec::len),
            Some(1),
            "the line is still there"
        );

        // Every admin route (as the OpenAPI document lists them) refuses no token, a wrong
        // token, a cart token and a customer token.
        let customer = app.customer("eve@example.com").await;
        let admin_routes: Vec<(Method, String)> = cartridge_host::api::openapi::documented_routes()
            .filter(|(_, path)| path.starts_with("/admin"))
            .map(|(method, path)| {
                let concrete = path
                    .replace("{id}", &tee)
                    .replace("{sku}", "TEE-M")
                    .replace("{location}", "eu")
                    .replace("{name}", "tiered-discount")
                    .replace("{version}", "1.0.0")
                    .replace("{capability}", "http")
                    .replace("{secret}", "api-key")
                    .replace("{hook}", "pricing");
                (
                    Method::from_bytes(method.to_uppercase().as_bytes()).expect("method"),
                    concrete,
                )
            })
            .collect();
        assert!(admin_routes.len() >= 15, "{admin_routes:?}");
        for (method, path) in &admin_routes {
            for auth in [
                None,
                Some("Bearer wrong".to_owned()),
                Some(format!("Bearer {token}")),
                Some(format!("Bearer {customer}")),
            ] {
                let headers: Vec<(&str, &str)> =
                    auth.iter().map(|a| ("authorization", a.as_str())).collect();
                let r = app
                    .send(method.clone(), path, &headers, Some("{}".into()))
                    .await;
                assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.body);
            }
        }
        let r = app
            .admin(Method::GET, "/admin/inventory/TEE-M", Value::Null)
            .await;
        assert_eq!(r.body["levels"][0]["on_hand"], 10, "nothing changed");
        app.db.drop_database().await;
    }
}

/// `/metrics` names the plugins and their traffic: it answers the scrape-only token and admin
/// tokens, and nobody else — no token, a wrong one, a cart's or a customer's.
#[tokio::test]
async fn metrics_answer_only_their_token_and_admins() {
    for db in test_databases().await {
        let app = spawn_app(db, &["tiered-discount"]).await;
        app.seed().await;
        let (cart, token) = app.new_cart().await;
        // A priced cart: a plugin call, so that there is a series to see.
        let r = app.add_line(&cart, &token, "TEE-M", 1).await;
        assert!(r.status < 300, "{}", r.body);
        let customer = app.customer("mallory@example.com").await;
        let get = |auth: Option<String>| {
            let mut req = app.client.get(format!("{}/metrics", app.base));
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            async move {
                let r = req.send().await.expect("request");
                (r.status().as_u16(), r.text().await.expect("text"))
            }
        };
        for auth in [
            None,
            Some("Bearer wrong".to_owned()),
            Some("Bearer ".to_owned()),
            Some(format!("Bearer {token}")),
            Some(format!("Bearer {customer}")),
            Some(METRICS.to_owned()),
        ] {
            let (status, body) = get(auth.clone()).await;
            assert_eq!(status, 401, "{auth:?}: {body}");
            let body: Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(body["error"]["code"], "unauthorized", "{auth:?}");
        }
        for auth in [format!("Bearer {METRICS}"), format!("Bearer {ADMIN}")] {
            let (status, body) = get(Some(auth.clone())).await;
            assert_eq!(status, 200, "{auth}: {body}");
            assert!(
                body.contains("plugin=\"tiered-discount\""),
                "{auth}: {body}"
            );
            // This host's pool (the harness gives it 256 slots), none held between requests.
            assert!(
                body.contains("\ncartridge_plugin_instance_slots 256\n")
                    && body.contains("\ncartridge_plugin_instance_slots_free 256\n"),
                "{auth}: {body}"
            );
            // The pricing plugins' instances stayed for their next calls.
            let idle = body
                .lines()
                .find_map(|l| l.strip_prefix("cartridge_plugin_instances_idle "))
                .and_then(|n| n.parse::<u32>().ok());
            assert!(idle.is_some_and(|n| n >= 1), "{auth}: {body}");
            let count = |prefix: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|n| n.parse::<u64>().ok())
            };
            assert!(
                count("cartridge_plugin_instance_fates_total{fate=\"kept\"} ")
                    .is_some_and(|n| n >= 1)
                    && count("cartridge_plugin_instantiations_total ").is_some_and(|n| n >= 1),
                "{auth}: {body}"
            );
        }
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_client_error_and_changes_nothing() {
    for db in test_databases().await {
        let app = spawn_app(db, &["tiered-discount", "loop-forever"]).await;
        app.seed().await;
        let (cart, token) = app.new_cart().await;
        let lines = format!("/store/carts/{cart}/lines");
        let cases: Vec<(Method, String, String, u16, &str)> = vec![
            (
                Method::POST,
                lines.clone(),
                "{not json".into(),
                400,
                "malformed_json",
            ),
            (
                Method::POST,
                lines.clone(),
                json!({"sku": "TEE-M", "quantity": "two"}).to_string(),
                422,
                "invalid_input",
            ),
            (
                Method::POST,
                lines.clone(),
                json!({"sku": "TEE-M", "quantity": 0}).to_string(),
                422,
                "invalid_input",
            ),
            (
                Method::POST,
                lines.clone(),
                json!({"sku": "TEE-M", "quantity": -3}).to_string(),
                422,
                "invalid_input",
            ),
            (
                Method::POST,
                lines.clone(),
                json!({"sku": "TEE-M", "quantity": 100000}).to_string(),
                422,
                "invalid_input",
            ),
            (
                Method::POST,
                lines.clone(),
                json!({"sku": "NOPE", "quantity": 1}).to_string(),
                422,
                "not_for_sale",
            ),
            (
                Method::POST,
                lines.clone(),
                json!({"sku": "TEE-M", "quantity": 1, "price": 1}).to_string(),
                422,
                "invalid_input",
            ),
            (
                Method::POST,
                lines.clone(),
                format!("{{\"sku\": \"{}\"}}", "x".repeat(1024 * 1024)),
                413,
                "payload_too_large",
            ),
            (
                Method::PATCH,
                format!("{lines}/nope"),
                json!({"quantity": 1}).to_string(),
                404,
                "line_not_found",
            ),
            (
                Method::PUT,
                format!("/store/carts/{cart}/coupons"),
                json!({"codes": ["no spaces allowed"]}).to_string(),
                422,
                "invalid_input",
            ),
            // A NUL character: PostgreSQL cannot hold one in text (found by schemathesis; see
            // the URI cases below).
            (
                Method::POST,
                "/store/customers".to_owned(),
                r#"{"email": "ada@example.com", "password": "correct horse battery", "name": "Ada\u0000"}"#.to_owned(),
                422,
                "invalid_input",
            ),
            (
                Method::PUT,
                format!("/store/carts/{cart}/details"),
                r#"{"shipping_address": {"name": "Ada\u0000", "line1": "Main St 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}}"#.to_owned(),
                422,
                "invalid_input",
            ),
            // An array is not an object, though serde would fill a struct's fields from it in
            // order (found by schemathesis).
            (
                Method::POST,
                lines.clone(),
                json!(["TEE-M", 1]).to_string(),
                422,
                "invalid_input",
            ),
        ];
        for (method, path, body, status, code) in cases {
            let r = app
                .send(
                    method.clone(),
                    &path,
                    &[("x-cart-token", &token)],
                    Some(body),
                )
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{method} {path}: {}",
                r.body
            );
        }
        let r = app
            .send(
                Method::POST,
                "/store/carts",
                &[],
                Some(json!({"currency": "euro"}).to_string()),
            )
            .await;
        assert_eq!(r.status, 422);
        let r = app
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/checkout"),
                &[("x-cart-token", &token), ("idempotency-key", "array")],
                Some(json!(["a@b.de", null, null, "tok_visa"]).to_string()),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("invalid_input")),
            "{}",
            r.body
        );
        // A NUL character anywhere: PostgreSQL cannot hold one in text (it answered 500 there,
        // while SQLite stored it), so no route takes one, on either database (found by
        // schemathesis).
        for path in [
            "/store/products/%00",
            "/store/products?q=a%00b",
            &format!("/store/carts/{cart}%00"),
        ] {
            let r = app.send(Method::GET, path, &[], None).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (400, Some("invalid_uri")),
                "{path}"
            );
        }
        // An escaped backslash before `u0000` is text, not a NUL.
        let r = app
            .send(
                Method::PUT,
                &format!("/store/carts/{cart}/coupons"),
                &[("x-cart-token", &token)],
                Some(r#"{"codes": ["A\\u0000"]}"#.to_owned()),
            )
            .await;
        assert_ne!(
            r.body["error"]["message"],
            "text must not contain the NUL character (\\u0000)"
        );
        for body in [json!(["EUR"]), json!("EUR"), json!(null)] {
            let r = app
                .send(Method::POST, "/store/carts", &[], Some(body.to_string()))
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (422, Some("invalid_input")),
                "{body}"
            );
        }
        let r = app
            .send(Method::GET, "/store/products?limit=lots", &[], None)
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (400, Some("invalid_query"))
        );

        let bad_products = [
            json!({"title": "", "variants": [{"sku": "A", "title": "a", "prices": {"EUR": 1}}]}),
            json!({"title": "x", "variants": []}),
            json!({"title": "x", "variants": [{"sku": "has space", "title": "a", "prices": {"EUR": 1}}]}),
            json!({"title": "x", "variants": [{"sku": "A", "title": "a", "prices": {"euro": 1}}]}),
            json!({"title": "x", "variants": [{"sku": "A", "title": "a", "prices": {"EUR": -1}}]}),
            json!({"title": "x", "categories": ["nope"], "variants": [{"sku": "A", "title": "a", "prices": {"EUR": 1}}]}),
        ];
        for product in bad_products {
            let r = app
                .admin(Method::POST, "/admin/products", product.clone())
                .await;
            assert_eq!(r.status, 422, "{product}: {}", r.body);
        }
        let r = app
            .admin(Method::POST, "/admin/products", json!({"title": "Dup", "variants": [{"sku": "TEE-M", "title": "again", "prices": {"EUR": 1}}]}))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("sku_taken"))
        );
        let r = app
            .admin(
                Method::POST,
                "/admin/inventory/TEE-M/eu/adjust",
                json!({"delta": -11, "reason": "lost"}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("insufficient_stock"))
        );
        // The extremes of the type: i64::MIN has no absolute value (found by schemathesis).
        for delta in [i64::MIN, i64::MIN + 1, -1_000_001, 1_000_001, i64::MAX, 0] {
            let r = app
                .admin(
                    Method::POST,
                    "/admin/inventory/TEE-M/eu/adjust",
                    json!({"delta": delta, "reason": "fuzz"}),
                )
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (422, Some("invalid_input")),
                "delta {delta}"
            );
        }
        let r = app
            .admin(
                Method::POST,
                "/admin/plugins/loop-forever/invoke",
                json!({"id": "c"}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("invalid_input"))
        );

        // Nothing of the above changed the store.
        let r = app.send(Method::GET, "/store/products", &[], None).await;
        assert_eq!(r.body["products"].as_array().map(Vec::len), Some(2));
        let r = app
            .cart(Method::GET, &format!("/store/carts/{cart}"), &token, None)
            .await;
        assert_eq!(r.body["lines"].as_array().map(Vec::len), Some(0));
        let r = app
            .admin(Method::GET, "/admin/inventory/TEE-M", Value::Null)
            .await;
        assert_eq!(r.body["levels"][0]["on_hand"], 10);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_failing_plugin_invocation_is_a_bad_gateway_with_its_named_error() {
    for db in test_databases().await {
        let app = spawn_app(db, &["tiered-discount", "loop-forever"]).await;
        let cart: Value = serde_json::from_str(
            &std::fs::read_to_string(plugins().fixture("tiered-discount", "cart.json"))
                .expect("fixture"),
        )
        .expect("json");
        let r = app
            .admin(
                Method::POST,
                "/admin/plugins/loop-forever/invoke",
                cart.clone(),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (502, Some("deadline_exceeded"))
        );
        let r = app
            .admin(Method::POST, "/admin/plugins/tiered-discount/invoke", cart)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["priced"]["line_discounts"], 2398);
        let r = app
            .admin(Method::POST, "/admin/plugins/nope/invoke", json!({}))
            .await;
        assert_eq!(r.status, 404);
        app.db.drop_database().await;
    }
}

const SHOP: &[&str] = &["tiered-discount", "rules-fraud", "test-gateway"];
/// [`SHOP`] with the coupon promotions (`FREESHIP`, `WELCOME10`, …), as the demo store has it.
const WITH_COUPONS: &[&str] = &[
    "tiered-discount",
    "coupon-promotions",
    "rules-fraud",
    "test-gateway",
];

fn address(country: &str) -> Value {
    json!({"name": "Ada Buyer", "line1": "Main St 1", "city": "Berlin", "postal_code": "10115", "country": country})
}

fn checkout_body(token: &str, billing_country: &str) -> Value {
    json!({
        "email": "ada@example.com",
        "shipping_address": address("DE"),
        "billing_address": address(billing_country),
        "payment_token": token,
    })
}

impl TestApp {
    async fn cart_with(&self, sku: &str, quantity: i64) -> (String, String) {
        let (cart, token) = self.new_cart().await;
        let r = self
            .cart(
                Method::POST,
                &format!("/store/carts/{cart}/lines"),
                &token,
                Some(json!({"sku": sku, "quantity": quantity})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (cart, token)
    }

    async fn checkout(&self, cart: &str, token: &str, key: &str, body: &Value) -> Response {
        self.send(
            Method::POST,
            &format!("/store/carts/{cart}/checkout"),
            &[("x-cart-token", token), ("idempotency-key", key)],
            Some(body.to_string()),
        )
        .await
    }

    /// The shipping methods offered to the cart.
    async fn shipping_offers(&self, cart: &str, token: &str) -> Response {
        self.cart(
            Method::GET,
            &format!("/store/carts/{cart}/shipping-methods"),
            token,
            None,
        )
        .await
    }

    /// Chooses shipping method `code` on the cart; the priced cart.
    async fn choose_shipping(&self, cart: &str, token: &str, code: &str) -> Response {
        self.cart(
            Method::PUT,
            &format!("/store/carts/{cart}/shipping-method"),
            token,
            Some(json!({ "code": code })),
        )
        .await
    }

    /// What plugin `name` was given by its latest logged call on cart `cart` (the pricing and
    /// fraud inputs carry the cart's id), from the call log of an app that logs every call
    /// ([`spawn_app_logging_every_call`]). The log is written in batches: it waits for it.
    async fn logged_input(&self, name: &str, cart: &str) -> Value {
        self.logged_input_where(name, |input| input["id"] == cart)
            .await
    }

    /// [`TestApp::logged_input`] of the latest logged call whose input `matches`.
    async fn logged_input_where(&self, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/admin/plugins/{name}/calls?limit=50");
        for _ in 0..100 {
            let r = self.admin(Method::GET, &path, Value::Null).await;
            assert_eq!(r.status, 200, "{}", r.body);
            if let Some(call) = r.body["calls"]
                .as_array()
                .expect("calls")
                .iter()
                .find(|c| matches(&c["input"]))
            {
                return call["input"].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let r = self.admin(Method::GET, &path, Value::Null).await;
        panic!("{name}'s call was never logged: {}", r.body);
    }

    /// Runs a migration's SQL (`sqlite` or `postgres`, by the app's database) again, over what
    /// the app has stored since: how a test shows what a migration does to existing rows.
    async fn run_migration_again(&self, sqlite: &str, postgres: &str) {
        let db = Db::connect(&self.db.url).await.expect("connect");
        let migration = match db.backend() {
            cartridge_host::db::Backend::Sqlite => sqlite,
            cartridge_host::db::Backend::Postgres => postgres,
        };
        sqlx::raw_sql(migration)
            .execute(db.pool())
            .await
            .expect("the migration, again");
    }

    /// Checks out a cart of three TEE-M and two SOCK from a seeded store; the order's id.
    async fn three_tees_and_two_socks_ordered(&self) -> String {
        let (cart, token) = self.cart_with("TEE-M", 3).await;
        self.add_line(&cart, &token, "SOCK", 2).await;
        let r = self
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }

    async fn level(&self, sku: &str) -> Value {
        self.admin(Method::GET, &format!("/admin/inventory/{sku}"), Value::Null)
            .await
            .body["levels"][0]
            .clone()
    }
}

#[tokio::test]
async fn a_shopper_checks_out_and_the_order_is_captured_and_fulfilled() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let (cart, token) = app.cart_with("TEE-M", 3).await;
        let r = app
            .checkout(&cart, &token, "k1", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let order = r.body["id"].as_str().expect("id").to_owned();
        assert_eq!(r.body["status"], "placed");
        assert_eq!(r.body["payment_status"], "authorized");
        assert_eq!(r.body["fulfilment_status"], "unfulfilled");
        assert_eq!(r.body["total"], 5997 - 299);
        assert_eq!(r.body["payment"]["authorized"], 5997 - 299);
        assert_eq!(
            r.body["decisions"]["priced_by"][0]["name"],
            "tiered-discount"
        );
        assert_eq!(
            r.body["decisions"]["fraud"]["decided_by"][0]["name"],
            "rules-fraud"
        );
        assert_eq!(r.body["decisions"]["payment"]["name"], "test-gateway");
        // Checkout answers with the order it wrote, exactly as reading it back shows it.
        let stored = app
            .admin(Method::GET, &format!("/admin/orders/{order}"), Value::Null)
            .await;
        assert_eq!(stored.status, 200, "{}", stored.body);
        assert_eq!(r.body, stored.body, "{}", app.db.backend);
        let level = app.level("TEE-M").await;
        assert_eq!(
            (level["committed"].as_i64(), level["reserved"].as_i64()),
            (Some(3), Some(0))
        );

        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/capture"),
                Value::Null,
            )
            .await;
        assert_eq!(
            (r.status, r.body["payment_status"].as_str()),
            (200, Some("captured")),
            "{}",
            r.body
        );
        assert_eq!(r.body["payment"]["captured"], 5997 - 299);
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/fulfil"),
                Value::Null,
            )
            .await;
        assert_eq!(r.body["fulfilment_status"], "fulfilled", "{}", r.body);
        let level = app.level("TEE-M").await;
        assert_eq!(
            (level["on_hand"].as_i64(), level["committed"].as_i64()),
            (Some(7), Some(0))
        );

        for action in ["fulfil", "cancel", "capture"] {
            let r = app
                .admin(
                    Method::POST,
                    &format!("/admin/orders/{order}/{action}"),
                    Value::Null,
                )
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (409, Some("invalid_transition")),
                "{action}"
            );
        }
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock_and_a_cancel_voids_and_restocks() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let (cart, token) = app.cart_with("TEE-L", 2).await;
        let r = app
            .checkout(
                &cart,
                &token,
                "k1",
                &checkout_body("tok_chargeDeclinedInsufficientFunds", "DE"),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (402, Some("payment_refused")),
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("(insufficient_funds)"))
        );
        let level = app.level("TEE-L").await;
        assert_eq!(
            (level["reserved"].as_i64(), level["available"].as_i64()),
            (Some(0), Some(10))
        );
        // The gateway unreachable: whether it authorised is unknown, so the answer is not final
        // for the key — a retry with the same key runs again (and reuses the gateway's
        // idempotency) instead of replaying a refusal.
        let r = app
            .checkout(
                &cart,
                &token,
                "k-down",
                &checkout_body("tok_gatewayUnavailable", "DE"),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );
        let db = Db::connect(&app.db.url).await.expect("db");
        let kept: Option<(String,)> =
            sqlx::query_as("SELECT key FROM idempotency_keys WHERE key = 'k-down'")
                .fetch_optional(db.pool())
                .await
                .expect("query");
        assert!(kept.is_none(), "the key is free for the retry");
        assert_eq!(app.level("TEE-L").await["reserved"].as_i64(), Some(0));
        // A card number where a token belongs is refused without being echoed back.
        let mut body = checkout_body("x", "DE");
        body["payment_token"] = json!(4242424242424242_u64);
        let r = app.checkout(&cart, &token, "k-pan", &body).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(
            !r.body.to_string().contains("4242424242424242"),
            "{}",
            r.body
        );

        // Half the total authorised: no order on less than the total.
        let r = app
            .checkout(
                &cart,
                &token,
                "k-half",
                &checkout_body("tok_partialAuthorization", "DE"),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (402, Some("payment_refused")),
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .to_string()
                .contains("partial_authorization"),
            "{}",
            r.body
        );
        assert_eq!(app.level("TEE-L").await["reserved"].as_i64(), Some(0));

        // A card that needs a 3-D Secure challenge: nothing is held, so no order either.
        let r = app
            .checkout(
                &cart,
                &token,
                "k3ds",
                &checkout_body("tok_threeDSecure2Required", "DE"),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (402, Some("payment_refused")),
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .to_string()
                .contains("(requires_action)"),
            "{}",
            r.body
        );
        assert_eq!(app.level("TEE-L").await["reserved"].as_i64(), Some(0));

        let r = app
            .checkout(&cart, &token, "k2", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let order = r.body["id"].as_str().expect("id").to_owned();
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/cancel"),
                Value::Null,
            )
            .await;
        assert_eq!(
            (r.body["status"].as_str(), r.body["payment_status"].as_str()),
            (Some("cancelled"), Some("voided")),
            "{}",
            r.body
        );
        let level = app.level("TEE-L").await;
        assert_eq!(
            (level["committed"].as_i64(), level["available"].as_i64()),
            (Some(0), Some(10))
        );
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/cancel"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 409, "a second cancel changes nothing");
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn the_fraud_hook_denies_or_holds_risky_checkouts() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let r = app
            .admin(
                Method::POST,
                "/admin/inventory/TEE-M/eu/adjust",
                json!({"delta": 500, "reason": "receive"}),
            )
            .await;
        assert_eq!(r.status, 200);
        // 300 × 19.99 less 15 % (5,097.45) for a first order, billed abroad: score 95, denied.
        let (cart, token) = app.cart_with("TEE-M", 300).await;
        let r = app
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "FR"))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("checkout_denied")),
            "{}",
            r.body
        );
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("address-mismatch"))
        );
        assert_eq!(
            app.level("TEE-M").await["reserved"],
            0,
            "nothing reserved for a denied checkout"
        );

        // 130 × 19.99 less 15 % (2,208.90) billed abroad: score 70, held for review but placed.
        let (cart, token) = app.cart_with("TEE-M", 130).await;
        let r = app
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "FR"))
            .await;
        assert_eq!(
            (r.status, r.body["status"].as_str()),
            (201, Some("on_hold")),
            "{}",
            r.body
        );
        assert_eq!(r.body["decisions"]["fraud"]["decision"], "review");
        let order = r.body["id"].as_str().expect("id").to_owned();
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/fulfil"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 409, "an order on hold does not ship");

        // Orders stored before the decision was snake_case ("Review") are rewritten by
        // migration 0019.
        let db = Db::connect(&app.db.url).await.expect("connect");
        sqlx::query("UPDATE orders SET decisions = replace(decisions, '\"review\"', '\"Review\"') WHERE id = $1")
            .bind(&order)
            .execute(db.pool())
            .await
            .expect("the old form");
        let path = format!("/admin/orders/{order}");
        let r = app.admin(Method::GET, &path, Value::Null).await;
        assert_eq!(r.body["decisions"]["fraud"]["decision"], "Review");
        app.run_migration_again(
            include_str!("../../migrations/sqlite/0019_fraud_decision_snake_case.sql"),
            include_str!("../../migrations/postgres/0019_fraud_decision_snake_case.sql"),
        )
        .await;
        let r = app.admin(Method::GET, &path, Value::Null).await;
        assert_eq!(r.body["decisions"]["fraud"]["decision"], "review");
        app.db.drop_database().await;
    }
}

/// The buyer's history the fraud hook is given, as a plugin author reads it in the WIT: by
/// the checkout's email whatever its case; refused payments of the last day counted
/// (declines and steps the checkout cannot take, not an unreachable gateway), so that
/// rules-fraud's failed-payment velocity rule fires; the lifetime spend in the checkout's
/// currency only; first seen when the account was made, before any order.
#[tokio::test]
async fn the_fraud_hook_sees_the_buyers_refused_payments_spend_and_account() {
    for db in test_databases().await {
        let app = spawn_app_logging_every_call(db, SHOP).await;
        app.seed().await;
        let r = app
            .admin(
                Method::POST,
                "/admin/products",
                json!({"title": "Mug", "variants": [
                    {"sku": "MUG", "title": "Mug", "prices": {"EUR": 1000, "USD": 5000}}
                ]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        for sku in ["MUG", "TEE-M"] {
            let r = app
                .admin(
                    Method::POST,
                    &format!("/admin/inventory/{sku}/eu/adjust"),
                    json!({"delta": 50, "reason": "receive"}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let ada = app.customer("ada@example.com").await;
        let buy = |currency: &'static str, sku: &'static str, owner: Option<String>| {
            let app = &app;
            async move {
                let auth = owner.map(|t| format!("Bearer {t}"));
                let headers: Vec<(&str, &str)> = auth
                    .as_deref()
                    .map(|a| vec![("authorization", a)])
                    .unwrap_or_default();
                let r = app
                    .send(
                        Method::POST,
                        "/store/carts",
                        &headers,
                        Some(json!({ "currency": currency }).to_string()),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                let cart = r.body["id"].as_str().expect("id").to_owned();
                let token = r.body["token"].as_str().expect("token").to_owned();
                let r = app
                    .cart(
                        Method::POST,
                        &format!("/store/carts/{cart}/lines"),
                        &token,
                        Some(json!({"sku": sku, "quantity": 1})),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                (cart, token)
            }
        };
        let checkout = |cart: String, token: String, email: &'static str, pay: &'static str| {
            let app = &app;
            async move {
                let mut body = checkout_body(pay, "DE");
                body["email"] = json!(email);
                app.checkout(&cart, &token, "k", &body).await
            }
        };
        let history_given = |cart: String| {
            let app = &app;
            async move { app.logged_input("rules-fraud", &cart).await["customer"]["history"].clone() }
        };

        // Ada's first order, from her own cart, under her email in capitals: no order before
        // it, first seen when her account was made.
        let (cart, token) = buy("EUR", "TEE-M", Some(ada.clone())).await;
        let r = checkout(cart.clone(), token, "ADA@Example.com", "tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let first_total = r.body["total"].as_i64().expect("total");
        let history = history_given(cart).await;
        assert_eq!(history["order_count"], 0, "{history}");
        assert_eq!(history["failed_payments_last_24h"], 0, "{history}");
        let first_seen = history["first_seen"].as_i64();
        assert!(
            first_seen.is_some_and(|t| t > 1_700_000_000_000),
            "the account's creation: {history}"
        );

        // Three refusals as a guest, and an unreachable gateway, which is not the buyer's.
        for pay in [
            "tok_chargeDeclinedInsufficientFunds",
            "tok_chargeDeclined",
            "tok_threeDSecure2Required",
            "tok_gatewayUnavailable",
        ] {
            let (cart, token) = buy("EUR", "TEE-M", None).await;
            let r = checkout(cart, token, "ada@example.com", pay).await;
            assert!(matches!(r.status, 402 | 503), "{pay}: {}", r.body);
        }
        // Another buyer's refusal is theirs.
        let (cart, token) = buy("EUR", "TEE-M", None).await;
        let r = checkout(cart, token, "bob@example.com", "tok_chargeDeclined").await;
        assert_eq!(r.status, 402, "{}", r.body);
        // An order in dollars.
        let (cart, token) = buy("USD", "MUG", None).await;
        let r = checkout(cart, token, "ada@example.com", "tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["currency"], "USD");

        let (cart, token) = buy("EUR", "MUG", None).await;
        let r = checkout(cart.clone(), token, "ada@example.com", "tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let codes: Vec<&str> = r.body["decisions"]["fraud"]["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .filter_map(|reason| reason["code"].as_str())
            .collect();
        assert_eq!(codes, ["velocity-failed-payments"], "{}", r.body);
        let history = history_given(cart).await;
        assert_eq!(history["order_count"], 2, "{history}");
        assert_eq!(history["orders_last_24h"], 2, "{history}");
        assert_eq!(history["failed_payments_last_24h"], 3, "{history}");
        assert_eq!(
            history["lifetime_spend"],
            json!({"amount": first_total, "currency": "EUR"}),
            "the dollars are not added to the euros: {history}"
        );
        assert_eq!(history["first_seen"].as_i64(), first_seen, "{history}");

        // Bob's history has his refusal alone.
        let (cart, token) = buy("EUR", "MUG", None).await;
        let r = checkout(cart.clone(), token, "bob@example.com", "tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        let history = history_given(cart).await;
        assert_eq!(history["failed_payments_last_24h"], 1, "{history}");
        assert_eq!(
            history["first_seen"],
            Value::Null,
            "a first-time guest: {history}"
        );
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn checkout_is_idempotent_per_key() {
    for db in test_databases().await {
        let app = spawn_unhurried_app(db, SHOP).await;
        app.seed().await;
        let (cart, token) = app.cart_with("SOCK", 2).await;
        let body = checkout_body("tok_visa", "DE");
        let r = app
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/checkout"),
                &[("x-cart-token", &token)],
                Some(body.to_string()),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (400, Some("idempotency_key_required"))
        );
        // A key whose request could not reach the cart (a wrong token, an unknown cart) is not
        // spent on that refusal: the same key with the right token checks out.
        let wrong = app.checkout(&cart, "not-the-token", "same", &body).await;
        assert_eq!(
            (wrong.status, wrong.body["error"]["code"].as_str()),
            (404, Some("cart_not_found")),
            "{}",
            wrong.body
        );
        let unknown = app
            .checkout(
                "01890a5d-ac96-774b-bcce-b302099a8057",
                &token,
                "same",
                &body,
            )
            .await;
        assert_eq!(unknown.status, 404, "{}", unknown.body);
        let stored: i64 =
            sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM idempotency_keys")
                .fetch_one(Db::connect(&app.db.url).await.expect("db").pool())
                .await
                .expect("count keys");
        assert_eq!(stored, 0, "a refused request stores nothing with its key");

        let first = app.checkout(&cart, &token, "same", &body).await;
        assert_eq!(first.status, 201, "{}", first.body);
        let again = app.checkout(&cart, &token, "same", &body).await;
        assert_eq!(
            (again.status, &again.body),
            (201, &first.body),
            "replayed, not re-run"
        );
        let other = app
            .checkout(
                &cart,
                &token,
                "same",
                &checkout_body("tok_mastercard", "DE"),
            )
            .await;
        assert_eq!(
            (other.status, other.body["error"]["code"].as_str()),
            (422, Some("idempotency_key_reused"))
        );
        assert_eq!(app.level("SOCK").await["committed"], 2, "one order");

        // The cart is an order now: another key (a double click, a client that lost the
        // answer and made a new key) cannot make a second one.
        let twice = app.checkout(&cart, &token, "another", &body).await;
        assert_eq!(
            (twice.status, twice.body["error"]["code"].as_str()),
            (409, Some("cart_already_ordered")),
            "{}",
            twice.body
        );
        // The stored answer lost (a crash between the order and the idempotency record): a
        // retry with the first key is the same attempt, and answers with the same order.
        let db = Db::connect(&app.db.url).await.expect("db");
        sqlx::query("DELETE FROM idempotency_keys WHERE key = 'same'")
            .execute(db.pool())
            .await
            .expect("forget the stored answer");
        let retried = app.checkout(&cart, &token, "same", &body).await;
        assert_eq!(retried.status, 201, "{}", retried.body);
        assert_eq!(retried.body["id"], first.body["id"], "the same order");
        assert_eq!(app.level("SOCK").await["committed"], 2, "still one order");

        // Fifty concurrent attempts with one fresh key: one order, one charge.
        let (cart, token) = app.cart_with("TEE-L", 1).await;
        let app = std::sync::Arc::new(app);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (app, cart, token, body) =
                    (app.clone(), cart.clone(), token.clone(), body.clone());
                tokio::spawn(async move { app.checkout(&cart, &token, "burst", &body).await })
            })
            .collect();
        let mut orders = std::collections::HashSet::new();
        for t in tasks {
            let r = t.await.expect("task");
            match r.status {
                201 => {
                    orders.insert(r.body["id"].as_str().expect("id").to_owned());
                }
                409 => assert_eq!(r.body["error"]["code"], "request_in_progress"),
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert_eq!(orders.len(), 1, "exactly one order");
        assert_eq!(app.level("TEE-L").await["committed"], 1);
        let app = std::sync::Arc::into_inner(app).expect("sole owner");
        app.db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_shoppers_checking_out_the_last_unit_make_one_order() {
    for db in test_databases().await {
        let app = spawn_unhurried_app(db, SHOP).await;
        app.seed().await;
        let r = app
            .admin(
                Method::POST,
                "/admin/inventory/TEE-M/eu/adjust",
                json!({"delta": -9, "reason": "sold elsewhere"}),
            )
            .await;
        assert_eq!(r.body["available"], 1);
        let mut carts = Vec::new();
        for _ in 0..200 {
            carts.push(app.cart_with("TEE-M", 1).await);
        }
        let app = std::sync::Arc::new(app);
        let tasks: Vec<_> = carts
            .into_iter()
            .map(|(cart, token)| {
                let app = app.clone();
                tokio::spawn(async move {
                    app.checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
                        .await
                })
            })
            .collect();
        let mut placed = 0;
        for t in tasks {
            let r = t.await.expect("task");
            match r.status {
                201 => placed += 1,
                409 => assert_eq!(r.body["error"]["code"], "insufficient_stock", "{}", r.body),
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert_eq!(placed, 1);
        let level = app.level("TEE-M").await;
        assert_eq!(
            (
                level["on_hand"].as_i64(),
                level["committed"].as_i64(),
                level["available"].as_i64()
            ),
            (Some(1), Some(1), Some(0))
        );
        let app = std::sync::Arc::into_inner(app).expect("sole owner");
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn an_empty_cart_or_a_bad_checkout_is_refused() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let (cart, token) = app.new_cart().await;
        let r = app
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("empty_cart"))
        );
        let (cart, token) = app.cart_with("SOCK", 1).await;
        for (key, body) in [
            (
                "a",
                json!({"email": "nope", "shipping_address": address("DE"), "payment_token": "tok_visa"}),
            ),
            (
                "b",
                json!({"email": "a@b.c", "shipping_address": address("Germany"), "payment_token": "tok_visa"}),
            ),
            (
                "c",
                json!({"email": "a@b.c", "shipping_address": address("DE"), "payment_token": ""}),
            ),
            (
                "d",
                json!({"email": "a@b.c", "shipping_address": address("DE"), "payment_token": "tok_visa", "card_number": "4242424242424242"}),
            ),
        ] {
            let r = app.checkout(&cart, &token, key, &body).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (422, Some("invalid_input")),
                "{body}: {}",
                r.body
            );
        }
        assert_eq!(app.level("SOCK").await["reserved"], 0);
        // A body refused before anything ran does not use up its key (as at Stripe).
        let r = app
            .checkout(&cart, &token, "d", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = app
            .admin(Method::GET, "/admin/orders/nope", Value::Null)
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("order_not_found"))
        );
        app.db.drop_database().await;
    }
}

impl TestApp {
    /// A captured order for 3 × TEE-M (total 56.98 after the tiered discount).
    async fn captured_order(&self) -> String {
        let (cart, token) = self.cart_with("TEE-M", 3).await;
        let r = self
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let order = r.body["id"].as_str().expect("id").to_owned();
        let r = self
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/capture"),
                Value::Null,
            )
            .await;
        assert_eq!(r.body["payment"]["captured"], 5698);
        order
    }

    async fn refund(&self, order: &str, key: &str, amount: i64) -> Response {
        self.send(
            Method::POST,
            &format!("/admin/orders/{order}/refunds"),
            &[
                ("authorization", &format!("Bearer {ADMIN}")),
                ("idempotency-key", key),
            ],
            Some(json!({"amount": amount}).to_string()),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_are_partial_idempotent_and_never_exceed_what_was_captured() {
    for db in test_databases().await {
        let app = spawn_unhurried_app(db, SHOP).await;
        app.seed().await;
        let order = app.captured_order().await;
        let r = app.refund(&order, "r1", 1000).await;
        assert_eq!(
            (r.status, r.body["payment_status"].as_str()),
            (200, Some("partially_refunded")),
            "{}",
            r.body
        );
        let again = app.refund(&order, "r1", 1000).await;
        assert_eq!(
            again.body, r.body,
            "the same key is replayed, not refunded twice"
        );
        assert_eq!(again.body["payment"]["refunded"], 1000);
        let r = app.refund(&order, "r2", 5000).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("refund_exceeds_captured"))
        );
        let r = app.refund(&order, "r3", 0).await;
        assert_eq!(r.status, 422);

        // 4,698 left; twenty concurrent refunds of 500 each: exactly nine go through.
        let app = std::sync::Arc::new(app);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (app, order) = (app.clone(), order.clone());
                tokio::spawn(async move { app.refund(&order, &format!("c{i}"), 500).await.status })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("task") {
                200 => ok += 1,
                409 => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(ok, 9);
        let r = app
            .admin(Method::GET, &format!("/admin/orders/{order}"), Value::Null)
            .await;
        assert_eq!(r.body["payment"]["refunded"], 5500);
        let r = app.refund(&order, "last", 198).await;
        assert_eq!(r.body["payment_status"], "refunded", "{}", r.body);
        let app = std::sync::Arc::into_inner(app).expect("sole owner");
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_received_return_restocks_once_and_never_more_than_was_sold() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let order = app.captured_order().await;
        let returns = format!("/admin/orders/{order}/returns");
        let r = app
            .admin(
                Method::POST,
                &returns,
                json!({"return_id": "rma-1", "lines": [{"sku": "TEE-M", "quantity": 1}]}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("invalid_transition")),
            "not shipped yet"
        );
        app.admin(
            Method::POST,
            &format!("/admin/orders/{order}/fulfil"),
            Value::Null,
        )
        .await;
        assert_eq!(app.level("TEE-M").await["on_hand"], 7);

        let r = app
            .admin(
                Method::POST,
                &returns,
                json!({"return_id": "rma-1", "lines": [{"sku": "TEE-M", "quantity": 2}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(app.level("TEE-M").await["on_hand"], 9);
        let r = app
            .admin(
                Method::POST,
                &returns,
                json!({"return_id": "rma-1", "lines": [{"sku": "TEE-M", "quantity": 2}]}),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            app.level("TEE-M").await["on_hand"],
            9,
            "the same return restocks once"
        );
        let r = app
            .admin(
                Method::POST,
                &returns,
                json!({"return_id": "rma-2", "lines": [{"sku": "TEE-M", "quantity": 2}]}),
            )
            .await;
        assert_eq!(
            r.status, 422,
            "only one of three can still come back: {}",
            r.body
        );
        let r = app
            .admin(
                Method::POST,
                &returns,
                json!({"return_id": "rma-3", "lines": [{"sku": "MUG", "quantity": 1}]}),
            )
            .await;
        assert_eq!(r.status, 422, "not part of the order");
        let r = app
            .admin(
                Method::POST,
                &returns,
                json!({"return_id": "rma-2", "lines": [{"sku": "TEE-M", "quantity": 1}]}),
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(app.level("TEE-M").await["on_hand"], 10);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn every_route_in_the_openapi_document_exists() {
    let db = test_databases().await.into_iter().next().expect("sqlite");
    let app = spawn_app(db, &[]).await;
    let r = app.send(Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(r.body["openapi"], "3.1.0");
    let documented: Vec<(String, String)> = r.body["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .map(|m| (m.clone(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        documented.len(),
        cartridge_host::api::openapi::documented_routes().count()
    );
    for (method, path) in documented {
        let concrete = path
            .replace("{id}", "x")
            .replace("{line}", "x")
            .replace("{sku}", "x")
            .replace("{location}", "x")
            .replace("{name}", "x")
            .replace("{version}", "1.0.0")
            .replace("{capability}", "x")
            .replace("{secret}", "x")
            .replace("{hook}", "pricing");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = app
            .send(method.clone(), &concrete, &[], Some("{}".into()))
            .await;
        // A route that does not exist answers 404 or 405 with no JSON body.
        assert!(
            !(matches!(r.status, 404 | 405) && r.body.is_null()),
            "{method} {path} is documented but not routed"
        );
    }
    app.db.drop_database().await;
}

impl TestApp {
    /// Seeds the demo store (`cartridge serve --demo`'s catalog, stock and shipping).
    async fn seed_demo(&self) {
        let pool = Db::connect(&self.db.url).await.expect("connect");
        let seeded = cartridge_host::demo::seed(
            &cartridge_host::catalog::Catalog::new(pool.clone()),
            &cartridge_host::inventory::Inventory::new(pool.clone()),
            &cartridge_host::shipping::Shipping::new(pool),
            1,
        )
        .await
        .expect("demo store");
        assert!(seeded, "the catalog was not empty");
    }

    async fn customer(&self, email: &str) -> String {
        let (_, r) = self.sign_up(email).await;
        r.body["token"].as_str().expect("token").to_owned()
    }

    /// Registers `email` and logs in: both answers.
    async fn sign_up(&self, email: &str) -> (Response, Response) {
        let registered = self
            .send(
                Method::POST,
                "/store/customers",
                &[],
                Some(
                    json!({"email": email, "password": "correct horse battery", "name": "Ada"})
                        .to_string(),
                ),
            )
            .await;
        assert_eq!(registered.status, 201, "{}", registered.body);
        let r = self
            .send(
                Method::POST,
                "/store/customers/login",
                &[],
                Some(json!({"email": email, "password": "correct horse battery"}).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (registered, r)
    }
}

/// Password guessing is slowed per email: five failures lock it for 15 minutes — the right
/// password included, unknown emails alike (being locked says nothing about an account) —
/// while other emails log in as before; the lock lifts when its time is up, and a success
/// clears the count.
#[tokio::test]
async fn five_failed_logins_lock_an_email_for_a_while_and_no_other() {
    use cartridge_host::customers::{Customers, LOCKOUT_MS, MAX_FAILED_LOGINS};
    for db in test_databases().await {
        let app = spawn_app(db, &[]).await;
        app.customer("ada@example.com").await;
        app.customer("bob@example.com").await;
        let login = |email: &'static str, password: &'static str| {
            let (client, base) = (app.client.clone(), app.base.clone());
            async move {
                let r = client
                    .post(format!("{base}/store/customers/login"))
                    .json(&json!({"email": email, "password": password}))
                    .send()
                    .await
                    .expect("login");
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok());
                let status = r.status().as_u16();
                let body: Value = r.json().await.expect("json");
                (
                    status,
                    body["error"]["code"].as_str().map(str::to_owned),
                    retry_after,
                )
            }
        };
        for email in ["ada@example.com", "nobody@example.com"] {
            for _ in 0..MAX_FAILED_LOGINS {
                let (status, code, _) = login(email, "wrong password!").await;
                assert_eq!(
                    (status, code.as_deref()),
                    (401, Some("invalid_credentials"))
                );
            }
            let (status, code, retry_after) = login(email, "correct horse battery").await;
            assert_eq!(
                (status, code.as_deref()),
                (429, Some("too_many_attempts")),
                "{email}"
            );
            let retry_after = retry_after.expect("Retry-After");
            assert!((LOCKOUT_MS / 1000 - 5..=LOCKOUT_MS / 1000).contains(&retry_after));
        }
        // Another email is not affected.
        let (status, ..) = login("bob@example.com", "correct horse battery").await;
        assert_eq!(status, 200);

        // When the lock is over, the right password works again, and clears the count.
        let pool = Db::connect(&app.db.url).await.expect("connect");
        let customers = Customers::new(pool);
        let later = cartridge_host::api::now_ms() + LOCKOUT_MS + 1_000;
        customers
            .login("ada@example.com", "correct horse battery", later)
            .await
            .expect("unlocked");
        for _ in 0..MAX_FAILED_LOGINS - 1 {
            assert!(
                customers
                    .login("ada@example.com", "wrong password!", later)
                    .await
                    .is_err()
            );
        }
        customers
            .login("ada@example.com", "correct horse battery", later)
            .await
            .expect("four failures do not lock");
        assert_eq!(
            customers
                .sweep_login_failures(later + LOCKOUT_MS)
                .await
                .expect("sweep"),
            1
        );
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn customers_see_their_own_carts_and_orders_and_nobody_elses() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let ada = app.customer("ada@example.com").await;
        let bob = app.customer("bob@example.com").await;
        let as_ada = format!("Bearer {ada}");
        let as_bob = format!("Bearer {bob}");

        // Ada's cart opens with her login alone.
        let r = app
            .send(
                Method::POST,
                "/store/carts",
                &[("authorization", &as_ada)],
                Some(json!({"currency": "EUR"}).to_string()),
            )
            .await;
        let cart = r.body["id"].as_str().expect("cart").to_owned();
        let r = app
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/lines"),
                &[("authorization", &as_ada)],
                Some(json!({"sku": "SOCK", "quantity": 1}).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = app
            .send(
                Method::GET,
                &format!("/store/carts/{cart}"),
                &[("authorization", &as_bob)],
                None,
            )
            .await;
        assert_eq!(r.status, 404, "Bob cannot open Ada's cart");
        let r = app
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/checkout"),
                &[("authorization", &as_ada), ("idempotency-key", "k")],
                Some(checkout_body("tok_visa", "DE").to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let order = r.body["id"].as_str().expect("order").to_owned();

        let r = app.my_orders(&as_ada).await;
        assert_eq!(r.body["orders"][0]["id"], order.as_str());
        let r = app.my_orders(&as_bob).await;
        assert_eq!(r.body["orders"], json!([]));
        let r = app
            .send(
                Method::GET,
                &format!("/store/orders/{order}"),
                &[("authorization", &as_ada)],
                None,
            )
            .await;
        assert_eq!(r.status, 200);
        let r = app
            .send(
                Method::GET,
                &format!("/store/orders/{order}"),
                &[("authorization", &as_bob)],
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("order_not_found"))
        );
        let r = app
            .send(Method::GET, &format!("/store/orders/{order}"), &[], None)
            .await;
        assert_eq!(r.status, 401);

        // A customer token is no admin credential.
        for (method, path) in [
            (Method::GET, format!("/admin/orders/{order}")),
            (Method::POST, format!("/admin/orders/{order}/cancel")),
        ] {
            let r = app
                .send(
                    method,
                    &path,
                    &[("authorization", &as_ada)],
                    Some("{}".into()),
                )
                .await;
            assert_eq!(r.status, 401);
        }

        let login =
            |email: &str, password: &str| json!({"email": email, "password": password}).to_string();
        for body in [
            login("ada@example.com", "wrong password!"),
            login("nobody@example.com", "correct horse battery"),
        ] {
            let r = app
                .send(Method::POST, "/store/customers/login", &[], Some(body))
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (401, Some("invalid_credentials"))
            );
        }
        let r = app
            .send(Method::POST, "/store/customers", &[], Some(json!({"email": "ADA@example.com", "password": "another long one", "name": "A"}).to_string()))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("email_taken"))
        );
        let r = app
            .send(
                Method::POST,
                "/store/customers",
                &[],
                Some(
                    json!({"email": "c@example.com", "password": "short", "name": "C"}).to_string(),
                ),
            )
            .await;
        assert_eq!(r.status, 422);
        app.db.drop_database().await;
    }
}

async fn titles(app: &TestApp, path: &str, auth: &[(&str, &str)]) -> (Vec<String>, Value) {
    let r = app.send(Method::GET, path, auth, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let titles = r.body["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["title"].as_str().unwrap_or_default().to_owned())
        .collect();
    (titles, r.body["ranked_by"].clone())
}

async fn ada_bought_a_tee(app: &TestApp) -> String {
    let ada = app.customer("ada@example.com").await;
    let auth = format!("Bearer {ada}");
    let r = app
        .send(
            Method::POST,
            "/store/carts",
            &[("authorization", &auth)],
            Some(json!({"currency": "EUR"}).to_string()),
        )
        .await;
    let cart = r.body["id"].as_str().expect("cart").to_owned();
    app.send(
        Method::POST,
        &format!("/store/carts/{cart}/lines"),
        &[("authorization", &auth)],
        Some(json!({"sku": "TEE-L", "quantity": 1}).to_string()),
    )
    .await;
    let r = app
        .send(
            Method::POST,
            &format!("/store/carts/{cart}/checkout"),
            &[("authorization", &auth), ("idempotency-key", "k")],
            Some(checkout_body("tok_visa", "DE").to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["customer_id"].is_string(), "{}", r.body);
    let order = r.body["id"].as_str().expect("order id");
    let stored = app
        .send(
            Method::GET,
            &format!("/store/orders/{order}"),
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(
        r.body, stored.body,
        "checkout answers with the stored order"
    );
    auth
}

#[tokio::test]
async fn personalization_reorders_the_store_for_a_known_customer_and_falls_back_on_failure() {
    for db in test_databases().await {
        let mut installed = SHOP.to_vec();
        installed.push("affinity-personalization");
        let app = spawn_app(db, &installed).await;
        app.seed().await;
        let ada = ada_bought_a_tee(&app).await;
        let (anonymous, by) = titles(&app, "/store/products", &[]).await;
        assert_eq!(anonymous, ["Wool Socks", "Organic Tee"]);
        assert!(by.is_null());
        let (for_ada, by) = titles(&app, "/store/products", &[("authorization", &ada)]).await;
        assert_eq!(
            for_ada,
            ["Organic Tee", "Wool Socks"],
            "Ada bought shirts before"
        );
        assert_eq!(by["decided_by"]["name"], "affinity-personalization");
        let document = app.send(Method::GET, "/openapi.json", &[], None).await.body;
        for path in ["/store/products", "/store/recommendations"] {
            let r = app
                .send(Method::GET, path, &[("authorization", &ada)], None)
                .await;
            matches_schema(&document, "ProductPage", path, &r);
        }
        let (picks, _) = titles(
            &app,
            "/store/recommendations?limit=1",
            &[("authorization", &ada)],
        )
        .await;
        assert_eq!(picks.len(), 1);
        let (picks, _) = titles(&app, "/store/recommendations?limit=2", &[]).await;
        assert_eq!(
            picks,
            ["Wool Socks", "Organic Tee"],
            "default order when anonymous"
        );
        // The plugin hears what is in Ada's open cart, and recommends nothing already in it;
        // the cart that became her order does not count.
        let picks_for_ada = || async {
            let auth = [("authorization", ada.as_str())];
            titles(&app, "/store/recommendations?limit=2", &auth)
                .await
                .0
        };
        assert_eq!(picks_for_ada().await, ["Organic Tee", "Wool Socks"]);
        let r = app
            .send(
                Method::POST,
                "/store/carts",
                &[("authorization", &ada)],
                Some(json!({"currency": "EUR"}).to_string()),
            )
            .await;
        let cart = r.body["id"].as_str().expect("cart");
        let add_for_ada = |sku: &'static str| {
            let (app, ada) = (&app, &ada);
            async move {
                let r = app
                    .send(
                        Method::POST,
                        &format!("/store/carts/{cart}/lines"),
                        &[("authorization", ada)],
                        Some(json!({"sku": sku, "quantity": 1}).to_string()),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
            }
        };
        add_for_ada("SOCK").await;
        assert_eq!(
            picks_for_ada().await,
            ["Organic Tee"],
            "the socks are in her cart already"
        );
        // A tee in another size than the one the listing shows is the tee all the same.
        add_for_ada("TEE-M").await;
        let picks = picks_for_ada().await;
        assert!(picks.is_empty(), "both are in her cart: {picks:?}");
        app.db.drop_database().await;
    }
    for db in test_databases().await {
        let mut installed = SHOP.to_vec();
        installed.push("panicking-personalization");
        let app = spawn_app(db, &installed).await;
        app.seed().await;
        let ada = ada_bought_a_tee(&app).await;
        let (for_ada, by) = titles(&app, "/store/products", &[("authorization", &ada)]).await;
        assert_eq!(
            for_ada,
            ["Wool Socks", "Organic Tee"],
            "the default order stands"
        );
        assert_eq!(by["skipped"][0]["code"], "trap");
        let document = app.send(Method::GET, "/openapi.json", &[], None).await.body;
        let r = app
            .send(
                Method::GET,
                "/store/products",
                &[("authorization", &ada)],
                None,
            )
            .await;
        matches_schema(&document, "ProductPage", "a page a failing plugin left", &r);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_failing_fraud_or_payment_plugin_stops_the_checkout_and_holds_no_stock() {
    for (broken, installed) in [
        (
            "fraud",
            ["tiered-discount", "panicking-fraud", "test-gateway"],
        ),
        (
            "payment",
            ["tiered-discount", "rules-fraud", "panicking-gateway"],
        ),
    ] {
        for db in test_databases().await {
            let app = spawn_app(db, &installed).await;
            app.seed().await;
            let (cart, token) = app.cart_with("TEE-M", 2).await;
            let r = app
                .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (502, Some("trap")),
                "{broken}: {}",
                r.body
            );
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("broken")),
                "{}",
                r.body
            );
            let level = app.level("TEE-M").await;
            assert_eq!(
                (level["reserved"].as_i64(), level["committed"].as_i64()),
                (Some(0), Some(0)),
                "{broken}"
            );
            // The failure was not stored under the key: once fixed, the same retry can succeed.
            let again = app
                .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
                .await;
            assert_eq!(again.status, 502);
            app.db.drop_database().await;
        }
    }
}

#[tokio::test]
async fn an_order_ships_in_parts_with_tracking_and_never_more_than_was_ordered() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let order = app.three_tees_and_two_socks_ordered().await;
        let fulfil = format!("/admin/orders/{order}/fulfil");

        let r = app
            .admin(Method::POST, &fulfil, json!({"carrier": "DHL", "tracking": "00340434", "lines": [{"sku": "TEE-M", "quantity": 2}]}))
            .await;
        assert_eq!(
            (r.status, r.body["fulfilment_status"].as_str()),
            (200, Some("partially_fulfilled")),
            "{}",
            r.body
        );
        assert_eq!(r.body["fulfilments"][0]["tracking"], "00340434");
        let level = app.level("TEE-M").await;
        assert_eq!(
            (level["on_hand"].as_i64(), level["committed"].as_i64()),
            (Some(8), Some(1))
        );

        let r = app
            .admin(
                Method::POST,
                &fulfil,
                json!({"lines": [{"sku": "TEE-M", "quantity": 2}]}),
            )
            .await;
        assert_eq!(r.status, 422, "only one tee is left to ship: {}", r.body);
        let r = app
            .admin(
                Method::POST,
                &fulfil,
                json!({"lines": [{"sku": "MUG", "quantity": 1}]}),
            )
            .await;
        assert_eq!(r.status, 422, "not in the order");
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/cancel"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 409, "part of it has shipped");

        // The rest, with no lines given: everything left.
        let r = app
            .admin(
                Method::POST,
                &fulfil,
                json!({"carrier": "UPS", "tracking": "1Z999"}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["fulfilment_status"].as_str()),
            (200, Some("fulfilled")),
            "{}",
            r.body
        );
        assert_eq!(r.body["fulfilments"].as_array().map(Vec::len), Some(2));
        assert_eq!(app.level("TEE-M").await["committed"], 0);
        assert_eq!(app.level("SOCK").await["on_hand"], 8);
        let r = app.admin(Method::POST, &fulfil, Value::Null).await;
        assert_eq!(r.status, 409);
        app.db.drop_database().await;
    }
}

/// Migration 0029 rebuilds reservations, order lines and payments on SQLite, stored by their
/// primary key (`WITHOUT ROWID`, reservations keyed by their reference): an order placed
/// before it reads back the same, its stock stays committed, and it still ships in parts —
/// shipping moves reservations by reference and id. (On PostgreSQL the migration changes
/// nothing.)
#[tokio::test]
async fn orders_placed_before_the_checkout_tables_were_rebuilt_read_and_ship_the_same() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let order = app.three_tees_and_two_socks_ordered().await;
        let path = format!("/admin/orders/{order}");
        let before = app.admin(Method::GET, &path, Value::Null).await.body;
        let (tees, socks) = (app.level("TEE-M").await, app.level("SOCK").await);
        assert_eq!(tees["committed"], 3, "{tees}");

        app.run_migration_again(
            include_str!("../../migrations/sqlite/0029_checkout_rows_without_rowid.sql"),
            include_str!("../../migrations/postgres/0029_checkout_rows_without_rowid.sql"),
        )
        .await;

        let after = app.admin(Method::GET, &path, Value::Null).await.body;
        assert_eq!(after, before);
        assert_eq!(app.level("TEE-M").await, tees);
        assert_eq!(app.level("SOCK").await, socks);
        let fulfil = format!("/admin/orders/{order}/fulfil");
        let r = app
            .admin(
                Method::POST,
                &fulfil,
                json!({"lines": [{"sku": "TEE-M", "quantity": 2}]}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["fulfilment_status"].as_str()),
            (200, Some("partially_fulfilled")),
            "{}",
            r.body
        );
        let level = app.level("TEE-M").await;
        assert_eq!(
            (level["on_hand"].as_i64(), level["committed"].as_i64()),
            (Some(8), Some(1))
        );
        let r = app.admin(Method::POST, &fulfil, Value::Null).await;
        assert_eq!(r.body["fulfilment_status"], "fulfilled", "{}", r.body);
        assert_eq!(app.level("TEE-M").await["committed"], 0);
        assert_eq!(app.level("SOCK").await["on_hand"], 8);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_price_change_reprices_open_carts_but_not_placed_orders_and_orders_can_be_searched() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        let tee = app.seed().await;
        let (placed_cart, placed_token) = app.cart_with("TEE-M", 1).await;
        let r = app
            .checkout(
                &placed_cart,
                &placed_token,
                "k",
                &checkout_body("tok_visa", "DE"),
            )
            .await;
        let order = r.body["id"].as_str().expect("id").to_owned();
        let (cart, token) = app.cart_with("TEE-M", 1).await;

        let r = app
            .admin(
                Method::PATCH,
                &format!("/admin/products/{tee}"),
                json!({"title": "Organic Tee 2", "prices": {"TEE-M": {"EUR": 2499}}}),
            )
            .await;
        assert_eq!(
            (r.status, r.body["title"].as_str()),
            (200, Some("Organic Tee 2")),
            "{}",
            r.body
        );
        let r = app
            .cart(Method::GET, &format!("/store/carts/{cart}"), &token, None)
            .await;
        assert_eq!(
            r.body["pricing"]["subtotal"], 2499,
            "open carts see the new price"
        );
        let r = app
            .admin(Method::GET, &format!("/admin/orders/{order}"), Value::Null)
            .await;
        assert_eq!(
            r.body["lines"][0]["unit_price"], 1999,
            "the order keeps its price"
        );

        for (body, status) in [
            (json!({"title": ""}), 422),
            (json!({"prices": {"SOCK": {"EUR": 1}}}), 422),
            (json!({"prices": {"TEE-M": {"eur": 1}}}), 422),
            (json!({"categories": ["nope"]}), 422),
            (json!({"stock": 5}), 422),
        ] {
            let r = app
                .admin(
                    Method::PATCH,
                    &format!("/admin/products/{tee}"),
                    body.clone(),
                )
                .await;
            assert_eq!(r.status, status, "{body}: {}", r.body);
        }
        let r = app
            .admin(Method::PATCH, "/admin/products/nope", json!({"title": "x"}))
            .await;
        assert_eq!(r.status, 404);

        let r = app
            .admin(
                Method::GET,
                "/admin/orders?email=ADA@example.com",
                Value::Null,
            )
            .await;
        assert_eq!(r.body["orders"][0]["id"], order.as_str());
        // Searched as stored: trimmed too, as the checkout and the accounts keep it.
        let r = app
            .admin(
                Method::GET,
                "/admin/orders?email=%20ada@Example.com%20",
                Value::Null,
            )
            .await;
        assert_eq!(r.body["orders"][0]["id"], order.as_str(), "{}", r.body);
        let r = app
            .admin(Method::GET, "/admin/orders?status=cancelled", Value::Null)
            .await;
        assert_eq!(r.body["orders"], json!([]));
        let r = app
            .admin(Method::GET, "/admin/orders?limit=many", Value::Null)
            .await;
        assert_eq!(r.status, 400);
        app.db.drop_database().await;
    }
}

/// Carts and checkout use cached catalog answers, but a change made anywhere else — another
/// host, a tool, plain SQL — is priced by the very next read: the database counts every catalog
/// change by trigger, and a cached answer is used only at the count it was read at.
#[tokio::test]
async fn a_catalog_change_made_elsewhere_is_priced_by_the_next_read() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let (cart, token) = app.cart_with("TEE-M", 1).await;
        let path = format!("/store/carts/{cart}");
        let subtotal = |r: Response| r.body["pricing"]["subtotal"].clone();
        for _ in 0..2 {
            let r = app.cart(Method::GET, &path, &token, None).await;
            assert_eq!(subtotal(r), 1999, "read, then read from the cache");
        }
        let elsewhere = Db::connect(&app.db.url).await.expect("connect");
        let run = |sql: &'static str| {
            let elsewhere = elsewhere.clone();
            async move {
                elsewhere
                    .write(move |tx| Box::pin(async move { tx.execute(sql, &[]).await }))
                    .await
                    .expect(sql)
            }
        };
        run("UPDATE variant_prices SET amount = 2499 WHERE sku = 'TEE-M' AND currency = 'EUR'")
            .await;
        let r = app.cart(Method::GET, &path, &token, None).await;
        assert_eq!(subtotal(r), 2499, "repriced elsewhere");
        run("UPDATE products SET status = 'archived' \
             WHERE id = (SELECT product_id FROM variants WHERE sku = 'TEE-M')")
        .await;
        let r = app.cart(Method::GET, &path, &token, None).await;
        assert_eq!(r.body["unavailable"], json!(["TEE-M"]), "{}", r.body);
        let r = app
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("not_for_sale")),
            "archived elsewhere: {}",
            r.body
        );
        run("UPDATE products SET status = 'active' \
             WHERE id = (SELECT product_id FROM variants WHERE sku = 'TEE-M')")
        .await;
        let r = app
            .checkout(&cart, &token, "k2", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(
            (r.status, &r.body["lines"][0]["unit_price"]),
            (201, &json!(2499)),
            "{}",
            r.body
        );

        // The shipping offers are cached beside the catalog's answers, at the same
        // generation: a rate changed elsewhere is what the next checkout charges.
        let r = app
            .admin(
                Method::POST,
                "/admin/shipping-methods",
                json!({"code": "standard", "name": "Standard", "rates": {"EUR": 495}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let mut shipped = checkout_body("tok_visa", "DE");
        shipped["shipping_method"] = json!("standard");
        let (cart, token) = app.cart_with("TEE-L", 1).await;
        let r = app.checkout(&cart, &token, "s1", &shipped).await;
        assert_eq!(
            (r.status, &r.body["shipping_total"]),
            (201, &json!(495)),
            "{}",
            r.body
        );
        let (cart, token) = app.cart_with("TEE-L", 1).await;
        let offered = |r: &Response| r.body["shipping_methods"][0]["amount"].clone();
        let r = app.shipping_offers(&cart, &token).await;
        assert_eq!((r.status, offered(&r)), (200, json!(495)), "{}", r.body);
        run("UPDATE shipping_rates SET amount = 695 WHERE currency = 'EUR'").await;
        let r = app.shipping_offers(&cart, &token).await;
        assert_eq!(
            (r.status, offered(&r)),
            (200, json!(695)),
            "the cart's offers after a rate changed elsewhere: {}",
            r.body
        );
        let r = app.checkout(&cart, &token, "s2", &shipped).await;
        assert_eq!(
            (r.status, &r.body["shipping_total"]),
            (201, &json!(695)),
            "rate changed elsewhere: {}",
            r.body
        );
        run("DELETE FROM shipping_rates").await;
        let (cart, token) = app.cart_with("TEE-L", 1).await;
        let r = app.checkout(&cart, &token, "s3", &shipped).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("shipping_unavailable")),
            "no rate left elsewhere: {}",
            r.body
        );
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn a_customer_asks_to_return_and_the_merchant_receives_it() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let ada = ada_bought_a_tee(&app).await;
        let r = app.my_orders(&ada).await;
        let order = r.body["orders"][0]["id"]
            .as_str()
            .expect("order")
            .to_owned();
        let ask = |body: Value, auth: String| {
            let app = &app;
            let order = order.clone();
            async move {
                app.send(
                    Method::POST,
                    &format!("/store/orders/{order}/returns"),
                    &[("authorization", &auth)],
                    Some(body.to_string()),
                )
                .await
            }
        };
        let r = ask(
            json!({"lines": [{"sku": "TEE-L", "quantity": 1}]}),
            ada.clone(),
        )
        .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (409, Some("invalid_transition")),
            "not shipped yet"
        );
        app.admin(
            Method::POST,
            &format!("/admin/orders/{order}/fulfil"),
            Value::Null,
        )
        .await;

        let r = ask(
            json!({"lines": [{"sku": "TEE-L", "quantity": 2}]}),
            ada.clone(),
        )
        .await;
        assert_eq!(r.status, 422, "only one was bought: {}", r.body);
        let bob = app.customer("bob@example.com").await;
        let r = ask(
            json!({"lines": [{"sku": "TEE-L", "quantity": 1}]}),
            format!("Bearer {bob}"),
        )
        .await;
        assert_eq!(r.status, 404, "not Bob's order");
        let r = ask(
            json!({"lines": [{"sku": "TEE-L", "quantity": 1}], "reason": "too small"}),
            ada.clone(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let request = r.body["id"].as_str().expect("request").to_owned();
        assert_eq!(
            app.level("TEE-L").await["on_hand"],
            9,
            "nothing restocked before it arrives"
        );

        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/returns"),
                json!({"return_id": request, "lines": [{"sku": "TEE-L", "quantity": 1}]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["return_requests"][0]["status"], "received");
        assert_eq!(app.level("TEE-L").await["on_hand"], 10);
        app.db.drop_database().await;
    }
}

/// Fails unless `r` succeeded with a body that matches `#/components/schemas/{schema}` of the
/// OpenAPI `document`; `what` names the answer in the failure.
fn matches_schema(document: &Value, schema: &str, what: &str, r: &Response) {
    assert!(r.status < 300, "{what}: {} {}", r.status, r.body);
    if let Some(Err(violations)) =
        cartridge_tests::schemathesis::validate(document, schema, &r.body)
    {
        panic!("{what} does not match {schema}:\n{violations}\n{}", r.body);
    }
}

/// A cart at each step and an order in every part (shipped, captured, part refunded, a return
/// received) match the schemas `/openapi.json` gives their routes' answers: what a client
/// generated from the document parses. schemathesis checks every answer it gets, but seldom
/// gets as far as an order.
#[tokio::test]
async fn carts_and_orders_match_the_schemas_the_openapi_document_gives_them() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let document = app.send(Method::GET, "/openapi.json", &[], None).await.body;
        let matches = |schema: &str, what: &str, r: &Response| {
            matches_schema(&document, schema, what, r);
        };
        for path in ["/health", "/ready"] {
            let r = app.send(Method::GET, path, &[], None).await;
            matches("Status", path, &r);
        }
        let r = app.create_cart().await;
        matches("PricedCartBody", "a new cart", &r);
        let cart = r.body["id"].as_str().expect("cart").to_owned();
        let token = r.body["token"].as_str().expect("token").to_owned();
        let r = app.add_line(&cart, &token, "TEE-M", 3).await;
        matches("PricedCartBody", "a cart with a discounted line", &r);
        assert!(r.body["pricing"]["applied"][0]["target"]["line_id"].is_string());
        let r = app
            .cart(
                Method::PUT,
                &format!("/store/carts/{cart}/details"),
                &token,
                Some(json!({"email": "ada@example.com", "shipping_address": address("DE")})),
            )
            .await;
        matches("PricedCartBody", "saved details", &r);

        let (registered, signed_in) = app.sign_up("grace@example.com").await;
        matches("Customer", "a registration", &registered);
        matches("SignedInBody", "a login", &signed_in);

        let ada = ada_bought_a_tee(&app).await;
        let r = app.my_orders(&ada).await;
        matches("OrderList", "the shopper's orders", &r);
        let order = r.body["orders"][0]["id"]
            .as_str()
            .expect("order")
            .to_owned();
        let path = format!("/admin/orders/{order}");
        let r = app.admin(Method::GET, &path, Value::Null).await;
        matches("OrderView", "a new order", &r);
        // Its decisions are documented field by field (and so checked above), not as any
        // object.
        let decisions = &document["components"]["schemas"]["Decisions"];
        for field in [
            "priced_by",
            "pricing_skipped",
            "applied",
            "fraud",
            "payment",
        ] {
            assert!(
                decisions["properties"][field].is_object(),
                "{field}: {decisions}"
            );
            assert!(
                r.body["decisions"].get(field).is_some(),
                "{field}: {}",
                r.body
            );
        }
        let fraud = &document["components"]["schemas"]["FraudDecision"]["properties"];
        for field in ["decision", "score", "decided_by", "reasons", "skipped"] {
            assert!(fraud[field].is_object(), "{field}: {fraud}");
        }
        for step in ["fulfil", "capture"] {
            let r = app
                .admin(Method::POST, &format!("{path}/{step}"), Value::Null)
                .await;
            matches("OrderView", step, &r);
        }
        let r = app.refund(&order, "r1", 500).await;
        matches("OrderView", "refund", &r);
        let r = app
            .send(
                Method::POST,
                &format!("/store/orders/{order}/returns"),
                &[("authorization", &ada)],
                Some(
                    json!({"lines": [{"sku": "TEE-L", "quantity": 1}], "reason": "too small"})
                        .to_string(),
                ),
            )
            .await;
        matches("ReturnRequested", "a return asked for", &r);
        let request = r.body["id"].as_str().expect("request").to_owned();
        let r = app
            .admin(
                Method::POST,
                &format!("{path}/returns"),
                json!({"return_id": request, "lines": [{"sku": "TEE-L", "quantity": 1}]}),
            )
            .await;
        matches("OrderView", "a return received", &r);
        let r = app
            .admin(Method::GET, "/admin/orders?limit=5", Value::Null)
            .await;
        matches("OrderList", "the admin's order search", &r);

        let r = app.admin(Method::GET, &path, Value::Null).await;
        matches(
            "OrderView",
            "an order shipped, captured, refunded and returned",
            &r,
        );
        for part in ["fulfilments", "return_requests"] {
            assert_eq!(r.body[part].as_array().map(Vec::len), Some(1), "{part}");
        }
        assert_eq!(r.body["payment"]["refunds"][0]["amount"], 500);
        let r = app
            .send(
                Method::GET,
                &format!("/store/orders/{order}"),
                &[("authorization", &ada)],
                None,
            )
            .await;
        matches("OrderView", "the shopper's view of it", &r);

        // A page of orders is read in one go, each part of every order in one statement: each
        // order on it must be what its own read shows, nothing of one landing on another.
        let other = app.captured_order().await;
        let r = app
            .admin(Method::GET, "/admin/orders?limit=5", Value::Null)
            .await;
        let page = r.body["orders"].as_array().expect("orders").clone();
        let listed: Vec<&str> = page.iter().filter_map(|o| o["id"].as_str()).collect();
        assert_eq!(listed, [other.as_str(), order.as_str()], "newest first");
        for listed in &page {
            let id = listed["id"].as_str().expect("id");
            let alone = app
                .admin(Method::GET, &format!("/admin/orders/{id}"), Value::Null)
                .await;
            assert_eq!(listed, &alone.body, "order {id} on the page and alone");
        }
        let mine = app.my_orders(&ada).await.body;
        assert_eq!(mine["orders"].as_array().map(Vec::len), Some(1));
        assert_eq!(mine["orders"][0], page[1], "the shopper's list");

        // The catalog's, the stock's and the shipping methods' own answers.
        for (body, schema, path) in [
            (
                json!({"id": "hats", "name": "Hats", "parent": "apparel"}),
                "CategoryAnswer",
                "/admin/categories",
            ),
            (
                json!({"id": "us", "name": "Newark"}),
                "LocationAnswer",
                "/admin/locations",
            ),
            (
                json!({"delta": 3, "reason": "receive"}),
                "StockLevel",
                "/admin/inventory/TEE-M/us/adjust",
            ),
            (
                json!({"code": "express", "name": "Express", "carrier": "DHL",
                       "countries": ["DE"], "rates": {"EUR": 1495}}),
                "ShippingMethod",
                "/admin/shipping-methods",
            ),
        ] {
            let r = app.admin(Method::POST, path, body).await;
            matches(schema, path, &r);
        }
        let r = app
            .admin(Method::GET, "/admin/shipping-methods", Value::Null)
            .await;
        matches("ShippingMethods", "the shipping methods", &r);
        let express = r.body["shipping_methods"][0]["id"]
            .as_str()
            .expect("a method")
            .to_owned();
        let r = app
            .admin(
                Method::GET,
                &format!("/admin/shipping-methods/{express}"),
                Value::Null,
            )
            .await;
        matches("ShippingMethod", "a shipping method", &r);
        let r = app
            .admin(Method::GET, "/admin/inventory/TEE-M", Value::Null)
            .await;
        matches("StockLevels", "a SKU's stock", &r);
        assert_eq!(r.body["levels"].as_array().map(Vec::len), Some(2));
        let r = app.shipping_offers(&cart, &token).await;
        matches("ShippingOffers", "the cart's shipping offers", &r);
        assert_eq!(
            (
                r.body["country"].as_str(),
                &r.body["shipping_methods"][0]["code"]
            ),
            (Some("DE"), &json!("express"))
        );
        let r = app
            .admin(Method::GET, "/admin/checkout-attempts", Value::Null)
            .await;
        matches("CheckoutAttempts", "the checkout attempts", &r);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn details_saved_on_the_cart_complete_the_checkout() {
    for db in test_databases().await {
        let app = spawn_app(db, SHOP).await;
        app.seed().await;
        let (cart, token) = app.cart_with("SOCK", 1).await;
        let details = format!("/store/carts/{cart}/details");
        let r = app
            .cart(
                Method::PUT,
                &details,
                &token,
                Some(json!({"email": "not-an-email"})),
            )
            .await;
        assert_eq!(r.status, 422);
        let r = app
            .cart(
                Method::PUT,
                &details,
                &token,
                Some(json!({"shipping_address": address("Germany")})),
            )
            .await;
        assert_eq!(r.status, 422);
        let r = app
            .cart(
                Method::PUT,
                &details,
                &token,
                Some(json!({"email": "ada@example.com", "shipping_address": address("DE")})),
            )
            .await;
        assert_eq!(
            (r.status, r.body["details"]["email"].as_str()),
            (200, Some("ada@example.com")),
            "{}",
            r.body
        );
        let r = app
            .checkout(&cart, &token, "k", &json!({"payment_token": "tok_visa"}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["email"], "ada@example.com");
        assert_eq!(r.body["shipping_address"]["country"], "DE");
        let (other, other_token) = app.cart_with("SOCK", 1).await;
        let r = app
            .checkout(
                &other,
                &other_token,
                "k",
                &json!({"payment_token": "tok_visa"}),
            )
            .await;
        assert_eq!(r.status, 422, "no email or address anywhere: {}", r.body);
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn idempotency_keys_expire_after_a_day_and_abandoned_ones_are_released() {
    use cartridge_host::api::idempotency::{ABANDONED_AFTER_MS, KEEP_MS, sweep};
    for db in test_databases().await {
        let pool = Db::connect(&db.url).await.expect("connect");
        pool.migrate().await.expect("migrate");
        let now: i64 = 1_800_000_000_000;
        for (key, state, age) in [
            ("fresh-done", "done", 1_000),
            ("old-done", "done", KEEP_MS + 1),
            ("fresh-running", "running", 1_000),
            ("abandoned", "running", ABANDONED_AFTER_MS + 1),
        ] {
            sqlx::query("INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at) VALUES ('s', $1, 'h', $2, $3)")
                .bind(key)
                .bind(state)
                .bind(now - age)
                .execute(pool.pool())
                .await
                .expect("insert");
        }
        assert_eq!(sweep(&pool, now).await.expect("sweep"), 2);
        let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
            .fetch_all(pool.pool())
            .await
            .expect("keys");
        assert_eq!(left, ["fresh-done", "fresh-running"], "{}", db.backend);
        db.drop_database().await;
    }
}

/// The pricing hook is told who owns the cart, the segments the merchant put them in and how
/// many orders they placed (cancelled ones not counted), so that a rule can reward a first or
/// a loyal customer; the fraud and personalization hooks get the segments too; a guest's cart
/// has no customer.
#[tokio::test]
async fn the_hooks_see_the_carts_owner_their_segments_and_orders() {
    for db in test_databases().await {
        let mut installed = SHOP.to_vec();
        installed.push("affinity-personalization");
        let app = spawn_app_logging_every_call(db, &installed).await;
        app.seed().await;
        let (registered, login) = app.sign_up("ada@example.com").await;
        let ada_id = registered.body["id"].as_str().expect("id").to_owned();
        let as_ada = format!("Bearer {}", login.body["token"].as_str().expect("token"));
        // A cart of Ada's with a line (the add is priced): what tiered-discount was given.
        let owned_cart = || {
            let (app, as_ada) = (&app, as_ada.clone());
            async move {
                let r = app
                    .send(
                        Method::POST,
                        "/store/carts",
                        &[("authorization", &as_ada)],
                        Some(json!({"currency": "EUR"}).to_string()),
                    )
                    .await;
                assert_eq!(r.status, 201, "{}", r.body);
                let cart = r.body["id"].as_str().expect("id").to_owned();
                let token = r.body["token"].as_str().expect("token").to_owned();
                let r = app
                    .cart(
                        Method::POST,
                        &format!("/store/carts/{cart}/lines"),
                        &token,
                        Some(json!({"sku": "TEE-M", "quantity": 1})),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                let given = app.logged_input("tiered-discount", &cart).await;
                (cart, token, given["customer"].clone())
            }
        };

        let (_, _, customer) = owned_cart().await;
        assert_eq!(
            customer,
            json!({"id": ada_id, "order_count": 0, "tags": []}),
            "a first order"
        );
        // The merchant puts Ada in two segments: both hooks are told.
        let r = app
            .admin(
                Method::PUT,
                &format!("/admin/customers/{ada_id}/tags"),
                json!({"tags": ["wholesale", "VIP"]}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (cart, token, customer) = owned_cart().await;
        assert_eq!(
            customer,
            json!({"id": ada_id, "order_count": 0, "tags": ["vip", "wholesale"]})
        );
        let r = app
            .send(
                Method::GET,
                "/store/recommendations",
                &[("authorization", &as_ada)],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let given = app
            .logged_input_where("affinity-personalization", |input| {
                input["customer_id"] == ada_id.as_str()
            })
            .await;
        assert_eq!(given["customer_tags"], json!(["vip", "wholesale"]));
        let r = app
            .checkout(&cart, &token, "k", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let order = r.body["id"].as_str().expect("id").to_owned();
        let given = app.logged_input("rules-fraud", &cart).await;
        assert_eq!(given["customer"]["id"], ada_id.as_str(), "{given}");
        assert_eq!(
            given["customer"]["tags"],
            json!(["vip", "wholesale"]),
            "{given}"
        );
        let (_, _, customer) = owned_cart().await;
        assert_eq!(customer["order_count"], 1, "{customer}");
        let r = app
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/cancel"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (_, _, customer) = owned_cart().await;
        assert_eq!(customer["order_count"], 0, "a cancelled order: {customer}");

        let (cart, _) = app.cart_with("TEE-M", 1).await;
        let given = app.logged_input("tiered-discount", &cart).await;
        assert_eq!(given["customer"], Value::Null, "a guest's cart: {given}");
        app.db.drop_database().await;
    }
}

/// Merchants find customers by email or segment and put them in segments; bad input is
/// refused with a stable code and changes nothing.
#[tokio::test]
async fn admins_find_customers_and_assign_their_segments() {
    for db in test_databases().await {
        let app = spawn_app(db, &[]).await;
        let mut ids = Vec::new();
        for email in ["ada@example.com", "bob@example.com", "cy@example.com"] {
            let (registered, _) = app.sign_up(email).await;
            ids.push(registered.body["id"].as_str().expect("id").to_owned());
            // Accounts made in one millisecond list by id; apart, newest first.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        let (ada, bob) = (&ids[0], &ids[1]);
        let tags = |id: &str, tags: Value| {
            let app = &app;
            let path = format!("/admin/customers/{id}/tags");
            async move { app.admin(Method::PUT, &path, json!({ "tags": tags })).await }
        };
        let r = tags(ada, json!(["vip"])).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["tags"], json!(["vip"]));
        assert_eq!(r.body["email"], "ada@example.com");
        let r = tags(bob, json!([" Wholesale ", "vip", "vip"])).await;
        assert_eq!(r.body["tags"], json!(["vip", "wholesale"]), "{}", r.body);

        let emails = |r: &Response| -> Vec<String> {
            r.body["customers"]
                .as_array()
                .expect("customers")
                .iter()
                .map(|c| c["email"].as_str().expect("email").to_owned())
                .collect()
        };
        let list = |query: &str| {
            let app = &app;
            let path = format!("/admin/customers{query}");
            async move { app.admin(Method::GET, &path, Value::Null).await }
        };
        let r = list("?tag=VIP").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(emails(&r), ["bob@example.com", "ada@example.com"]);
        let r = list("?email=ADA@example.com").await;
        assert_eq!(emails(&r), ["ada@example.com"]);
        assert_eq!(r.body["customers"][0]["tags"], json!(["vip"]));
        let r = list("").await;
        assert_eq!(
            emails(&r),
            ["cy@example.com", "bob@example.com", "ada@example.com"]
        );
        let r = list("?limit=1&offset=1").await;
        assert_eq!(emails(&r), ["bob@example.com"]);
        let r = app
            .admin(Method::GET, &format!("/admin/customers/{bob}"), Value::Null)
            .await;
        assert_eq!(
            (r.status, &r.body["tags"]),
            (200, &json!(["vip", "wholesale"]))
        );

        // Refused, and Ada's segments stay as they were.
        for (body, status, code) in [
            (json!({"tags": ["no spaces"]}), 422, "invalid_input"),
            (json!({"tags": ["-dash-first"]}), 422, "invalid_input"),
            (json!({"tags": ["x".repeat(41)]}), 422, "invalid_input"),
            (
                json!({"tags": (0..21).map(|n| format!("t{n}")).collect::<Vec<_>>()}),
                422,
                "invalid_input",
            ),
        ] {
            let r = app
                .admin(Method::PUT, &format!("/admin/customers/{ada}/tags"), body)
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{}",
                r.body
            );
        }
        for body in [
            r#"{"tags": "vip"}"#,
            r#"{"tags": [1]}"#,
            "{",
            r#"{"tag": []}"#,
        ] {
            let r = app
                .send(
                    Method::PUT,
                    &format!("/admin/customers/{ada}/tags"),
                    &[("authorization", &format!("Bearer {ADMIN}"))],
                    Some(body.to_owned()),
                )
                .await;
            assert!(
                (400..500).contains(&r.status) && r.body["error"]["code"].is_string(),
                "{body}: {} {}",
                r.status,
                r.body
            );
        }
        let r = tags("no-such-customer", json!(["vip"])).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("customer_not_found"))
        );
        let r = app
            .admin(
                Method::GET,
                "/admin/customers/no-such-customer",
                Value::Null,
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("customer_not_found"))
        );
        let r = list("?limit=-1").await;
        assert_eq!(r.status, 400, "{}", r.body);
        let r = app
            .admin(Method::GET, &format!("/admin/customers/{ada}"), Value::Null)
            .await;
        assert_eq!(r.body["tags"], json!(["vip"]), "{}", r.body);

        let r = tags(ada, json!([])).await;
        assert_eq!((r.status, &r.body["tags"]), (200, &json!([])));
        assert_eq!(emails(&list("?tag=vip").await), ["bob@example.com"]);
        app.db.drop_database().await;
    }
}

/// Refused payments are kept a week, then forgotten by the maintenance sweep.
#[tokio::test]
async fn refused_payments_are_forgotten_after_a_week() {
    use cartridge_host::orders::{PAYMENT_FAILURES_KEPT_MS, sweep_payment_failures};
    for db in test_databases().await {
        let pool = Db::connect(&db.url).await.expect("connect");
        pool.migrate().await.expect("migrate");
        let now: i64 = 1_800_000_000_000;
        for (order, age) in [("recent", 1_000), ("old", PAYMENT_FAILURES_KEPT_MS + 1)] {
            sqlx::query(
                "INSERT INTO payment_failures (email, at, order_id, code, amount, currency) \
                 VALUES ('ada@example.com', $1, $2, 'declined', 1999, 'EUR')",
            )
            .bind(now - age)
            .bind(order)
            .execute(pool.pool())
            .await
            .expect("insert");
        }
        assert_eq!(sweep_payment_failures(&pool, now).await.expect("sweep"), 1);
        let left: Vec<String> = sqlx::query_scalar("SELECT order_id FROM payment_failures")
            .fetch_all(pool.pool())
            .await
            .expect("failures");
        assert_eq!(left, ["recent"], "{}", db.backend);
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_of_one_sku_make_one_line_and_respect_the_maximum() {
    for db in test_databases().await {
        let app = std::sync::Arc::new(spawn_app(db, &[]).await);
        app.seed().await;
        let (cart, token) = app.new_cart().await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (app, cart, token) = (app.clone(), cart.clone(), token.clone());
                tokio::spawn(async move { app.add_line(&cart, &token, "SOCK", 100).await.status })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.expect("task"));
        }
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 422),
            "never a 500: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            9,
            "{statuses:?}"
        );
        let r = app
            .cart(Method::GET, &format!("/store/carts/{cart}"), &token, None)
            .await;
        assert_eq!(r.body["lines"].as_array().map(Vec::len), Some(1));
        assert_eq!(r.body["lines"][0]["quantity"], 900);
        let app = std::sync::Arc::into_inner(app).expect("sole owner");
        app.db.drop_database().await;
    }
}

#[tokio::test]
async fn shipping_is_chosen_checked_against_the_address_priced_and_kept_on_the_order() {
    for db in test_databases().await {
        let app = spawn_app(db, WITH_COUPONS).await;
        app.seed().await;
        let methods = "/admin/shipping-methods";
        let mut ids = std::collections::HashMap::new();
        for method in [
            json!({"code": "standard", "name": "Standard", "rates": {"EUR": 495, "USD": 595}}),
            json!({"code": "express", "name": "Express", "carrier": "DHL", "countries": ["DE", "AT"],
                   "position": -1, "rates": {"EUR": 1495}}),
            json!({"code": "us-ground", "name": "US Ground", "countries": ["US"], "rates": {"USD": 900}}),
        ] {
            let r = app.admin(Method::POST, methods, method).await;
            assert_eq!(r.status, 201, "{}", r.body);
            ids.insert(
                r.body["code"].as_str().expect("code").to_owned(),
                r.body["id"].as_str().expect("id").to_owned(),
            );
        }
        // Bad methods are refused with a clear code and store nothing.
        for (body, status, code) in [
            (
                json!({"code": "standard", "name": "Again", "rates": {"EUR": 1}}),
                409,
                "shipping_method_code_taken",
            ),
            (
                json!({"code": "neg", "name": "Neg", "rates": {"EUR": -1}}),
                422,
                "invalid_input",
            ),
            (
                json!({"code": "none", "name": "None", "rates": {}}),
                422,
                "invalid_input",
            ),
            (
                json!({"code": "de", "name": "DE", "countries": ["Germany"], "rates": {"EUR": 1}}),
                422,
                "invalid_input",
            ),
            (
                json!({"code": "bad code!", "name": "X", "rates": {"EUR": 1}}),
                422,
                "invalid_input",
            ),
            (
                json!({"code": "x", "name": "X", "rates": {"EUR": "1"}}),
                422,
                "invalid_input",
            ),
            (
                json!({"code": "x", "name": "X", "rates": {"EUR": 1}, "free": true}),
                422,
                "invalid_input",
            ),
        ] {
            let r = app.admin(Method::POST, methods, body.clone()).await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}: {}",
                r.body
            );
        }
        let r = app.admin(Method::GET, methods, Value::Null).await;
        let listed: Vec<&str> = r.body["shipping_methods"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|m| m["code"].as_str())
            .collect();
        assert_eq!(listed, ["express", "standard", "us-ground"], "by position");
        assert_eq!(r.body["shipping_methods"][1]["rates"]["EUR"], 495);
        let r = app
            .admin(Method::GET, &format!("{methods}/no-such-id"), Value::Null)
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (404, Some("shipping_method_not_found"))
        );

        // A cart sees what is priced in its currency; checkout wants a choice now that the
        // store ships, and holds no stock while refusing.
        let (cart, token) = app.cart_with("SOCK", 1).await;
        let r = app.shipping_offers(&cart, &token).await;
        let offered: Vec<&str> = r.body["shipping_methods"]
            .as_array()
            .expect("offers")
            .iter()
            .filter_map(|m| m["code"].as_str())
            .collect();
        assert_eq!(offered, ["express", "standard"], "{}", r.body);
        let r = app
            .checkout(&cart, &token, "k1", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("shipping_method_required")),
            "{}",
            r.body
        );
        assert_eq!(app.level("SOCK").await["reserved"], 0);

        // Choosing: only what is offered in the cart's currency and ships to its address.
        let choose = format!("/store/carts/{cart}/shipping-method");
        for (code, status, error) in [
            (json!("us-ground"), 422, "shipping_unavailable"),
            (json!("no-such-method"), 422, "shipping_unavailable"),
            (json!(7), 422, "invalid_input"),
            (json!("x".repeat(100_000)), 422, "invalid_input"),
        ] {
            let r = app
                .cart(Method::PUT, &choose, &token, Some(json!({ "code": code })))
                .await;
            assert_eq!(
                (r.status, r.body["error"]["code"].as_str()),
                (status, Some(error)),
                "{code}: {}",
                r.body
            );
        }
        let r = app
            .cart(
                Method::PUT,
                &format!("/store/carts/{cart}/details"),
                &token,
                Some(json!({"shipping_address": address("FR")})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = app.shipping_offers(&cart, &token).await;
        assert_eq!(r.body["country"], "FR");
        assert_eq!(r.body["shipping_methods"][0]["code"], "standard");
        assert_eq!(r.body["shipping_methods"].as_array().map(Vec::len), Some(1));
        let r = app
            .cart(
                Method::PUT,
                &choose,
                &token,
                Some(json!({"code": "express"})),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("shipping_unavailable")),
            "express does not ship to FR: {}",
            r.body
        );
        let r = app
            .cart(
                Method::PUT,
                &choose,
                &token,
                Some(json!({"code": "standard"})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["shipping_method"]["code"], "standard");
        assert_eq!(r.body["pricing"]["shipping"], 495);
        assert_eq!(r.body["pricing"]["total"], 500 + 495);
        // Clearing takes an explicit null: an empty object is a mistake and changes nothing.
        let r = app
            .cart(Method::PUT, &choose, &token, Some(json!({})))
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("invalid_input")),
            "{}",
            r.body
        );
        let r = app
            .cart(Method::GET, &format!("/store/carts/{cart}"), &token, None)
            .await;
        assert_eq!(r.body["shipping_method"]["code"], "standard", "{}", r.body);

        // A free-shipping promotion discounts the chosen rate.
        let r = app
            .cart(
                Method::PUT,
                &format!("/store/carts/{cart}/coupons"),
                &token,
                Some(json!({"codes": ["SAVE5", "FREESHIP", "freeship"]})),
            )
            .await;
        assert_eq!(r.body["coupon_codes"], json!(["FREESHIP", "SAVE5"]));
        assert_eq!(r.body["pricing"]["shipping_discount"], 495, "{}", r.body);
        assert_eq!(r.body["pricing"]["total"], 500);

        // Express, chosen for DE; the saved address then moves to FR, where it does not ship:
        // the cart stops pricing it, as checkout would refuse it.
        let (moving, moving_token) = app.cart_with("SOCK", 1).await;
        let details = format!("/store/carts/{moving}/details");
        let r = app.choose_shipping(&moving, &moving_token, "express").await;
        assert_eq!(r.body["pricing"]["shipping"], 1495, "{}", r.body);
        let r = app
            .cart(
                Method::PUT,
                &details,
                &moving_token,
                Some(json!({"shipping_address": address("FR")})),
            )
            .await;
        assert_eq!(
            r.body["shipping_method"],
            json!({"code": "express", "available": false}),
            "{}",
            r.body
        );
        assert_eq!(r.body["pricing"]["shipping"], 0);

        // The checkout ships to DE: the request may name another method for it.
        let mut body = checkout_body("tok_visa", "DE");
        body["shipping_method"] = json!("us-ground");
        let r = app.checkout(&cart, &token, "k2", &body).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("shipping_unavailable")),
            "{}",
            r.body
        );
        let r = app
            .checkout(&cart, &token, "k3", &checkout_body("tok_visa", "DE"))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let order = r.body["id"].as_str().expect("order").to_owned();
        assert_eq!(r.body["shipping_total"], 0, "FREESHIP: {}", r.body);
        assert_eq!(r.body["shipping_method"]["code"], "standard");
        assert_eq!(r.body["shipping_method"]["amount"], 495);
        assert_eq!(r.body["total"], 500);

        let (express_cart, express_token) = app.cart_with("SOCK", 1).await;
        let mut body = checkout_body("tok_visa", "DE");
        body["shipping_method"] = json!("express");
        let r = app
            .checkout(&express_cart, &express_token, "k4", &body)
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["shipping_total"], 1495);
        assert_eq!(r.body["total"], 500 + 1495);
        assert_eq!(r.body["shipping_method"]["carrier"], "DHL");

        // Editing a method changes open carts, never placed orders; an archived method is
        // shown as unavailable and checkout asks for another.
        let r = app
            .admin(
                Method::PUT,
                &format!("{methods}/{}", ids["standard"]),
                json!({"name": "Standard", "rates": {"EUR": 695}, "status": "active"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["code"], "standard");
        assert_eq!(r.body["rates"], json!({"EUR": 695}));
        let r = app
            .admin(Method::GET, &format!("/admin/orders/{order}"), Value::Null)
            .await;
        assert_eq!(r.body["shipping_method"]["amount"], 495);
        let (late_cart, late_token) = app.cart_with("SOCK", 1).await;
        let r = app
            .choose_shipping(&late_cart, &late_token, "standard")
            .await;
        assert_eq!(r.body["pricing"]["shipping"], 695, "{}", r.body);
        let r = app
            .admin(
                Method::PUT,
                &format!("{methods}/{}", ids["standard"]),
                json!({"name": "Standard", "rates": {"EUR": 695}, "status": "archived"}),
            )
            .await;
        assert_eq!(r.body["status"], "archived", "{}", r.body);
        let r = app
            .cart(
                Method::GET,
                &format!("/store/carts/{late_cart}"),
                &late_token,
                None,
            )
            .await;
        assert_eq!(
            r.body["shipping_method"],
            json!({"code": "standard", "available": false})
        );
        assert_eq!(r.body["pricing"]["shipping"], 0);
        let r = app
            .checkout(
                &late_cart,
                &late_token,
                "k5",
                &checkout_body("tok_visa", "DE"),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("shipping_unavailable")),
            "{}",
            r.body
        );
        assert_eq!(app.level("SOCK").await["reserved"], 0);
        let r = app
            .admin(
                Method::PUT,
                &format!("{methods}/{}", ids["standard"]),
                json!({"name": "Standard", "rates": {"EUR": 695}, "status": "gone"}),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.body);
        // A replace must say the status: leaving it out does not revive an archived method.
        let r = app
            .admin(
                Method::PUT,
                &format!("{methods}/{}", ids["standard"]),
                json!({"name": "Standard", "rates": {"EUR": 695}}),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.body);
        let r = app
            .admin(
                Method::GET,
                &format!("{methods}/{}", ids["standard"]),
                Value::Null,
            )
            .await;
        assert_eq!(r.body["status"], "archived");
        app.db.drop_database().await;
    }
}

/// The README's walk through the demo store, step by step, on the demo's own seed and plugins.
#[tokio::test]
async fn the_demo_store_can_be_shopped_as_the_readme_shows() {
    for db in test_databases().await {
        let app = spawn_app(db, WITH_COUPONS).await;
        app.seed_demo().await;
        let r = app.send(Method::GET, "/store/products", &[], None).await;
        assert_eq!(r.body["products"].as_array().map(Vec::len), Some(3));
        let r = app
            .send(
                Method::POST,
                "/store/carts",
                &[],
                Some(json!({"currency": "EUR"}).to_string()),
            )
            .await;
        let (cart, token) = (
            r.body["id"].as_str().expect("id").to_owned(),
            r.body["token"].as_str().expect("token").to_owned(),
        );
        let r = app.add_line(&cart, &token, "TEE-M", 3).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = app
            .cart(
                Method::PUT,
                &format!("/store/carts/{cart}/coupons"),
                &token,
                Some(json!({"codes": ["WELCOME10"]})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = app.shipping_offers(&cart, &token).await;
        assert_eq!(r.body["shipping_methods"].as_array().map(Vec::len), Some(2));
        let r = app.choose_shipping(&cart, &token, "standard").await;
        assert_eq!(r.body["pricing"]["shipping"], 495, "{}", r.body);
        let r = app
            .checkout(
                &cart,
                &token,
                "try-1",
                &json!({"email": "ada@example.com", "payment_token": "tok_visa", "shipping_address":
                        {"name": "Ada", "line1": "Main St 1", "city": "Berlin", "postal_code": "10115", "country": "DE"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["shipping_total"], 495);
        let order = r.body["id"].as_str().expect("order").to_owned();
        for action in ["capture", "fulfil"] {
            let r = app
                .admin(
                    Method::POST,
                    &format!("/admin/orders/{order}/{action}"),
                    Value::Null,
                )
                .await;
            assert_eq!(r.status, 200, "{action}: {}", r.body);
        }
        let r = app
            .admin(Method::GET, "/admin/inventory/TEE-M", Value::Null)
            .await;
        let on_hand: i64 = r.body["levels"]
            .as_array()
            .expect("levels")
            .iter()
            .filter_map(|l| l["on_hand"].as_i64())
            .sum();
        assert_eq!(on_hand, 50 - 3, "{}", r.body);
        app.db.drop_database().await;
    }
}

/// schemathesis against the live app, driven by its own `/openapi.json`: every documented
/// operation with generated valid and invalid input, boundary values, and sequences along the
/// document's links (a new cart → its lines → checkout → the order's admin routes), in the demo
/// store with its plugins. Fails on any 5xx or dropped connection, a status code or content
/// type the document does not declare, an answer that breaks the document's schema, or input
/// the document calls invalid being accepted. The seed is fixed, so a failure reproduces with
/// the `st` command line it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_drift_from_the_openapi_document() {
    for db in test_databases().await {
        let app = spawn_app(
            db,
            &[
                "tiered-discount",
                "coupon-promotions",
                "rules-fraud",
                "test-gateway",
                "affinity-personalization",
            ],
        )
        .await;
        app.seed_demo().await;
        // Everything with an admin token; then the customer's own routes with a customer's
        // (an admin token does not open them).
        let customer = app.customer("fuzz@example.com").await;
        for (token, paths) in [
            (ADMIN.to_owned(), None),
            (customer, Some("^/store/(customers/me/|orders/)")),
        ] {
            let base = app.base.clone();
            let report = tokio::task::spawn_blocking(move || {
                cartridge_tests::schemathesis::run(
                    &base,
                    &[("Authorization", &format!("Bearer {token}"))],
                    paths,
                    20_261_205,
                    25,
                )
            })
            .await
            .expect("schemathesis");
            let Some(report) = report else {
                return;
            };
            assert!(
                report.passed,
                "{}: schemathesis found failures:\n{}",
                app.db.backend, report.text
            );
        }
        app.db.drop_database().await;
    }
}
