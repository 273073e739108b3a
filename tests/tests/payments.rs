//! Payments end to end: idempotent capture, cancel and refund; the money invariants under
//! concurrency; payment webhooks (signatures, deduplication, events out of order); and the
//! localstripe harness the Stripe connector will be tested with.
//!
//! The real application on port 0 with the test gateway plugin, a fresh database per test:
//! SQLite always, PostgreSQL when `CARTRIDGE_TEST_DATABASE_URL` is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cartridge_host::api::AppState;
use cartridge_host::db::Db;
use cartridge_host::plugin::{Runtime, RuntimeConfig};
use cartridge_host::recovery::{GIVE_UP_AFTER_MS, INTERRUPTED_AFTER_MS, Recovered};
use cartridge_host::registry::RegistryConfig;
use cartridge_host::server::{Application, open_registry};
use cartridge_tests::localstripe::{LocalStripe, SECRET_KEY};
use cartridge_tests::{TestDatabase, plugins, test_databases};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "adm_payments";
/// The test gateway's default webhook secret (its `plugin.toml`).
const WEBHOOK_SECRET: &str = "whsec_test";
/// 3 × 19.99.
const TOTAL: i64 = 5997;

struct Shop {
    base: String,
    http: reqwest::Client,
    db: Db,
    /// The app's state, shared with the server: for the maintenance sweeps.
    state: AppState,
    database: TestDatabase,
    _plugins: tempfile::TempDir,
}

struct Reply {
    status: u16,
    body: Value,
}

/// The app with the test gateway as its only plugin, one product (`TEE`, EUR 19.99) and 1,000
/// in stock.
async fn shop(database: TestDatabase) -> Shop {
    shop_with(database, &["test-gateway"]).await
}

/// [`shop`] with these example plugins installed instead.
async fn shop_with(database: TestDatabase, installed: &[&str]) -> Shop {
    let dir = tempfile::tempdir().expect("tempdir");
    for plugin in installed {
        plugins().bundle_into(plugin, dir.path());
    }
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let db = Db::connect(&database.url).await.expect("connect");
    db.migrate().await.expect("migrate");
    let (registry, _) = open_registry(
        db.clone(),
        Arc::new(runtime),
        RegistryConfig::default(),
        Some(dir.path()),
    )
    .await
    .expect("registry");
    registry.spawn();
    let state = AppState::new(db.clone(), registry);
    state.add_admin_token("test", ADMIN).await.expect("token");
    let app = Application::build(SocketAddr::from(([127, 0, 0, 1], 0)), state.clone())
        .await
        .expect("bind");
    let addr = app.local_addr().expect("addr");
    tokio::spawn(app.run());
    let shop = Shop {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        db,
        state,
        database,
        _plugins: dir,
    };
    let r = shop
        .admin(
            "/admin/locations",
            None,
            json!({"id": "eu", "name": "Berlin"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = shop
        .admin(
            "/admin/products",
            None,
            json!({"title": "Tee", "variants": [{"sku": "TEE", "title": "M", "prices": {"EUR": 1999}}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = shop
        .admin(
            "/admin/inventory/TEE/eu/adjust",
            None,
            json!({"delta": 1000, "reason": "receive"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    shop
}

impl Shop {
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request");
        Reply {
            status: response.status().as_u16(),
            body: response.json().await.unwrap_or(Value::Null),
        }
    }

    /// An admin POST, with an `Idempotency-Key` when `key` is given.
    async fn admin(&self, path: &str, key: Option<&str>, body: Value) -> Reply {
        let auth = format!("Bearer {ADMIN}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(key.map(|k| ("idempotency-key", k)));
        self.send(
            Method::POST,
            path,
            &headers,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn order(&self, id: &str) -> Value {
        let auth = format!("Bearer {ADMIN}");
        let r = self
            .send(
                Method::GET,
                &format!("/admin/orders/{id}"),
                &[("authorization", &auth)],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    async fn available(&self) -> i64 {
        let auth = format!("Bearer {ADMIN}");
        let r = self
            .send(
                Method::GET,
                "/admin/inventory/TEE",
                &[("authorization", &auth)],
                None,
            )
            .await;
        r.body["levels"][0]["available"]
            .as_i64()
            .expect("available")
    }

    /// Checks out 3 × TEE with `token`.
    async fn checkout(&self, token: &str) -> Reply {
        let cart = self.cart().await;
        self.checkout_cart(&cart, token, "pay").await
    }

    /// A new cart with 3 × TEE: (id, cart token).
    async fn cart(&self) -> (String, String) {
        let r = self
            .send(
                Method::POST,
                "/store/carts",
                &[],
                Some(json!({"currency": "EUR"}).to_string().into_bytes()),
            )
            .await;
        let cart = r.body["id"].as_str().expect("cart").to_owned();
        let cart_token = r.body["token"].as_str().expect("token").to_owned();
        let r = self
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/lines"),
                &[("x-cart-token", &cart_token)],
                Some(
                    json!({"sku": "TEE", "quantity": 3})
                        .to_string()
                        .into_bytes(),
                ),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (cart, cart_token)
    }

    /// Checks out `cart` with the payment `token`, under the idempotency key `key`.
    async fn checkout_cart(
        &self,
        (cart, cart_token): &(String, String),
        token: &str,
        key: &str,
    ) -> Reply {
        let body = json!({
            "email": "ada@example.com",
            "payment_token": token,
            "shipping_address": {"name": "Ada", "line1": "Main St 1", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"},
        });
        self.send(
            Method::POST,
            &format!("/store/carts/{cart}/checkout"),
            &[("x-cart-token", cart_token), ("idempotency-key", key)],
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// A placed, authorised order for [`TOTAL`]; its id.
    async fn placed_order(&self) -> String {
        let r = self.checkout("tok_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["payment"]["authorized"], TOTAL);
        r.body["id"].as_str().expect("id").to_owned()
    }

    async fn drop_database(self) {
        self.database.drop_database().await;
    }
}

fn code(reply: &Reply) -> (u16, Option<&str>) {
    (reply.status, reply.body["error"]["code"].as_str())
}

/// What the gateway refunded, refund by refund, as the order's ledger has it.
fn gateway_refunds(order: &Value) -> Vec<i64> {
    order["payment"]["refunds"]
        .as_array()
        .expect("refunds")
        .iter()
        .map(|r| r["amount"].as_i64().expect("amount"))
        .collect()
}

fn amounts(order: &Value) -> (i64, i64, i64) {
    let p = &order["payment"];
    (
        p["authorized"].as_i64().expect("authorized"),
        p["captured"].as_i64().expect("captured"),
        p["refunded"].as_i64().expect("refunded"),
    )
}

// ------------------------------------------------------------------------------------------
// 1. Idempotency on the money routes

#[tokio::test]
async fn capture_cancel_and_refund_answer_a_repeated_key_with_the_first_response() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let order = shop.placed_order().await;
        let capture = format!("/admin/orders/{order}/capture");

        let r = shop
            .admin(&capture, Some("cap"), json!({"amount": TOTAL + 1}))
            .await;
        assert_eq!(
            code(&r),
            (409, Some("capture_exceeds_authorized")),
            "{}",
            r.body
        );
        assert_eq!(shop.order(&order).await["payment_status"], "authorized");
        let r = shop.admin(&capture, Some(""), json!({})).await;
        assert_eq!(code(&r), (400, Some("idempotency_key_required")));

        let first = shop
            .admin(&capture, Some("cap-1"), json!({"amount": 4000}))
            .await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(amounts(&first.body), (TOTAL, 4000, 0));
        let again = shop
            .admin(&capture, Some("cap-1"), json!({"amount": 4000}))
            .await;
        assert_eq!((again.status, &again.body), (200, &first.body), "replayed");
        let other = shop
            .admin(&capture, Some("cap-1"), json!({"amount": 3000}))
            .await;
        assert_eq!(code(&other), (422, Some("idempotency_key_reused")));
        // Without a key a repeat is refused by the state machine: never a second capture.
        let r = shop.admin(&capture, None, Value::Null).await;
        assert_eq!(code(&r), (409, Some("invalid_transition")));
        // A refusal under a new key is stored and replayed like a success.
        let refused = shop.admin(&capture, Some("cap-2"), json!({})).await;
        assert_eq!(code(&refused), (409, Some("invalid_transition")));
        let replayed = shop.admin(&capture, Some("cap-2"), json!({})).await;
        assert_eq!(replayed.body, refused.body);

        let refund = format!("/admin/orders/{order}/refunds");
        let r = shop.admin(&refund, None, json!({"amount": 100})).await;
        assert_eq!(code(&r), (400, Some("idempotency_key_required")));
        let first = shop
            .admin(&refund, Some("ref-1"), json!({"amount": 1000}))
            .await;
        assert_eq!(first.status, 200, "{}", first.body);
        let again = shop
            .admin(&refund, Some("ref-1"), json!({"amount": 1000}))
            .await;
        assert_eq!(again.body, first.body);
        assert_eq!(amounts(&shop.order(&order).await), (TOTAL, 4000, 1000));

        // Cancelling after the capture refunds what is left (3,000) at the gateway, once.
        let cancel = format!("/admin/orders/{order}/cancel");
        let first = shop.admin(&cancel, Some("can-1"), Value::Null).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(
            (&first.body["status"], &first.body["payment_status"]),
            (&json!("cancelled"), &json!("refunded"))
        );
        assert_eq!(amounts(&first.body), (TOTAL, 4000, 4000));
        assert_eq!(gateway_refunds(&first.body), [1000, 3000]);
        let again = shop.admin(&cancel, Some("can-1"), Value::Null).await;
        assert_eq!((again.status, &again.body), (200, &first.body));
        let r = shop.admin(&cancel, Some("can-2"), Value::Null).await;
        assert_eq!(code(&r), (409, Some("invalid_transition")));
        shop.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_captures_with_one_key_capture_once_and_agree() {
    for database in test_databases().await {
        let shop = Arc::new(shop(database).await);
        let order = shop.placed_order().await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (shop, order) = (shop.clone(), order.clone());
                tokio::spawn(async move {
                    shop.admin(
                        &format!("/admin/orders/{order}/capture"),
                        Some("burst"),
                        json!({"amount": 2500}),
                    )
                    .await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            let r = task.await.expect("task");
            match r.status {
                200 => answers.push(r.body),
                409 => assert_eq!(r.body["error"]["code"], "request_in_progress"),
                other => panic!("unexpected {other}: {}", r.body),
            }
        }
        assert!(!answers.is_empty());
        assert!(answers.iter().all(|a| a == &answers[0]), "one answer");
        assert_eq!(amounts(&shop.order(&order).await), (TOTAL, 2500, 0));
        Arc::into_inner(shop)
            .expect("sole owner")
            .drop_database()
            .await;
    }
}

// ------------------------------------------------------------------------------------------
// 2. Invariants under concurrency

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_refunds_and_a_cancel_never_refund_more_than_was_captured() {
    for database in test_databases().await {
        let shop = Arc::new(shop(database).await);
        // A declined payment holds no stock.
        let before = shop.available().await;
        let r = shop.checkout("tok_chargeDeclined").await;
        assert_eq!(code(&r), (402, Some("payment_refused")), "{}", r.body);
        assert_eq!(
            shop.available().await,
            before,
            "the reservation was released"
        );

        let order = shop.placed_order().await;
        let r = shop
            .admin(
                &format!("/admin/orders/{order}/capture"),
                None,
                json!({"amount": 5000}),
            )
            .await;
        assert_eq!(amounts(&r.body), (TOTAL, 5000, 0), "{}", r.body);

        // Twenty partial refunds (100, 200, … 2,000: 21,000 in all) race each other and a
        // cancel, which refunds whatever they leave.
        let mut tasks: Vec<_> = (1..=20)
            .map(|i| {
                let (shop, order) = (shop.clone(), order.clone());
                tokio::spawn(async move {
                    let amount = i * 100;
                    let r = shop
                        .admin(
                            &format!("/admin/orders/{order}/refunds"),
                            Some(&format!("r{i}")),
                            json!({"amount": amount}),
                        )
                        .await;
                    (amount, r)
                })
            })
            .collect();
        let canceller = {
            let (shop, order) = (shop.clone(), order.clone());
            tokio::spawn(async move {
                shop.admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
                    .await
            })
        };
        let mut refunded_by_requests = 0;
        for task in tasks.drain(..) {
            let (amount, r) = task.await.expect("task");
            match code(&r) {
                (200, _) => refunded_by_requests += amount,
                (409, Some("refund_exceeds_captured")) => {}
                other => panic!("unexpected {other:?}: {}", r.body),
            }
        }
        let cancelled = canceller.await.expect("cancel");
        assert_eq!(cancelled.status, 200, "{}", cancelled.body);
        assert!(refunded_by_requests <= 5000, "{refunded_by_requests}");
        let final_order = shop.order(&order).await;
        assert_eq!(
            amounts(&final_order),
            (TOTAL, 5000, 5000),
            "everything captured went back, nothing more"
        );
        assert_eq!(final_order["payment_status"], "refunded");
        assert_eq!(final_order["status"], "cancelled");
        let at_gateway = gateway_refunds(&final_order);
        assert_eq!(
            at_gateway.iter().sum::<i64>(),
            5000,
            "the gateway refunded exactly the capture: {at_gateway:?}"
        );
        let by_requests: i64 = final_order["payment"]["refunds"]
            .as_array()
            .expect("refunds")
            .iter()
            .filter(|r| r["reason"] != "order cancelled")
            .map(|r| r["amount"].as_i64().expect("amount"))
            .sum();
        assert_eq!(by_requests, refunded_by_requests, "{at_gateway:?}");
        let r = shop
            .admin(
                &format!("/admin/orders/{order}/refunds"),
                Some("late"),
                json!({"amount": 1}),
            )
            .await;
        assert_eq!(code(&r), (409, Some("refund_exceeds_captured")));
        Arc::into_inner(shop)
            .expect("sole owner")
            .drop_database()
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_racing_a_cancel_never_leaves_money_on_a_cancelled_order() {
    for database in test_databases().await {
        let shop = Arc::new(shop(database).await);
        for _ in 0..8 {
            let order = shop.placed_order().await;
            let capture = {
                let (shop, order) = (shop.clone(), order.clone());
                tokio::spawn(async move { shop.capture(&order).await })
            };
            let cancel = {
                let (shop, order) = (shop.clone(), order.clone());
                tokio::spawn(async move {
                    shop.admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
                        .await
                })
            };
            let (capture, cancel) = (capture.await.expect("task"), cancel.await.expect("task"));
            for r in [&capture, &cancel] {
                assert!(
                    r.status == 200 || code(r) == (409, Some("invalid_transition")),
                    "{}",
                    r.body
                );
            }
            let o = shop.order(&order).await;
            let (authorized, captured, refunded) = amounts(&o);
            assert!(captured <= authorized && refunded <= captured);
            if o["status"] == "cancelled" {
                assert_eq!(refunded, captured, "a cancelled order keeps no money: {o}");
                let settled = o["payment_status"] == "voided" || o["payment_status"] == "refunded";
                assert!(settled, "{o}");
            } else {
                assert_eq!(
                    (capture.status, o["payment_status"].as_str()),
                    (200, Some("captured"))
                );
            }
        }
        Arc::into_inner(shop)
            .expect("sole owner")
            .drop_database()
            .await;
    }
}

// ------------------------------------------------------------------------------------------
// 3. Webhooks

/// 64-bit FNV-1a: the test gateway's (deliberately non-cryptographic) signature.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).expect("seconds"))
        .expect("clock")
}

/// The `tg-signature` header for `body` signed with `secret` at `t`.
fn signature(secret: &str, t: i64, body: &str) -> String {
    let v1 = fnv1a64(format!("{secret}.{t}.{body}").as_bytes());
    format!("t={t},v1={v1:016x}")
}

fn event(id: &str, kind: &str, reference: &str, amount: i64) -> String {
    json!({"id": id, "type": kind, "reference": reference, "amount": amount,
           "currency": "EUR", "created": unix_seconds()})
    .to_string()
}

impl Shop {
    async fn deliver(&self, body: &str, signature: &str) -> Reply {
        self.send(
            Method::POST,
            "/webhooks/payments/test-gateway",
            &[("tg-signature", signature)],
            Some(body.as_bytes().to_vec()),
        )
        .await
    }

    async fn deliver_signed(&self, body: &str) -> Reply {
        let r = self
            .deliver(body, &signature(WEBHOOK_SECRET, unix_seconds(), body))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r
    }

    async fn stored_events(&self) -> i64 {
        self.rows_in("payment_events").await
    }

    /// How many rows `table` holds.
    async fn rows_in(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT CAST(COUNT(*) AS BIGINT) FROM {table}"))
            .fetch_one(self.db.pool())
            .await
            .expect("count")
    }

    async fn reference(&self, order: &str) -> String {
        self.order(order).await["payment"]["gateway_reference"]
            .as_str()
            .expect("reference")
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_delivered_ten_times_is_stored_once_and_applied_once() {
    for database in test_databases().await {
        let shop = Arc::new(shop(database).await);
        let order = shop.placed_order().await;
        let body = event(
            "evt_cap",
            "payment.captured",
            &shop.reference(&order).await,
            4000,
        );
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (shop, body) = (shop.clone(), body.clone());
                tokio::spawn(async move { shop.deliver_signed(&body).await })
            })
            .collect();
        let document = shop
            .send(Method::GET, "/openapi.json", &[], None)
            .await
            .body;
        let mut first = Vec::new();
        for task in tasks {
            let r = task.await.expect("task");
            if let Some(Err(violations)) =
                cartridge_tests::schemathesis::validate(&document, "Delivered", &r.body)
            {
                panic!("the acknowledgement does not match its schema: {violations}");
            }
            assert_eq!(r.body["event_id"], "evt_cap");
            if r.body["duplicate"] == false {
                first.push(r.body["outcome"].clone());
            } else {
                assert_eq!(r.body["outcome"], "applied", "the first delivery's outcome");
            }
        }
        assert_eq!(first, [json!("applied")], "exactly one delivery applied it");
        assert_eq!(shop.stored_events().await, 1);
        let o = shop.order(&order).await;
        assert_eq!(amounts(&o), (TOTAL, 4000, 0));
        assert_eq!(o["payment_status"], "captured");
        // Our own capture afterwards finds it done.
        let r = shop.capture(&order).await;
        assert_eq!(code(&r), (409, Some("invalid_transition")));
        Arc::into_inner(shop)
            .expect("sole owner")
            .drop_database()
            .await;
    }
}

#[tokio::test]
async fn forged_stale_or_malformed_deliveries_are_refused_and_store_nothing() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let order = shop.placed_order().await;
        let body = event(
            "evt_1",
            "payment.captured",
            &shop.reference(&order).await,
            TOTAL,
        );
        let now = unix_seconds();
        let tampered = body.replace(&TOTAL.to_string(), "1");
        for (what, body, header) in [
            (
                "forged",
                body.as_str(),
                signature("whsec_guess", now, &body),
            ),
            (
                "tampered",
                tampered.as_str(),
                signature(WEBHOOK_SECRET, now, &body),
            ),
            (
                "stale",
                body.as_str(),
                signature(WEBHOOK_SECRET, now - 420, &body),
            ),
            (
                "from the future",
                body.as_str(),
                signature(WEBHOOK_SECRET, now + 420, &body),
            ),
            ("unsigned", body.as_str(), String::new()),
        ] {
            let r = shop.deliver(body, &header).await;
            assert_eq!(
                code(&r),
                (400, Some("invalid_signature")),
                "{what}: {}",
                r.body
            );
        }
        let garbage = "{\"id\": \"evt_2\"";
        let r = shop
            .deliver(garbage, &signature(WEBHOOK_SECRET, now, garbage))
            .await;
        assert_eq!(code(&r), (400, Some("malformed_webhook")), "{}", r.body);
        let r = shop
            .send(
                Method::POST,
                "/webhooks/payments/nope",
                &[],
                Some(body.as_bytes().to_vec()),
            )
            .await;
        assert_eq!(code(&r), (404, Some("unknown_plugin")));
        // Every route documented as signature-authenticated refuses an unsigned delivery.
        let signed_routes: Vec<_> = cartridge_host::api::openapi::documented_access()
            .filter(|(_, _, who)| *who == "signature")
            .collect();
        assert!(!signed_routes.is_empty());
        for (method, path, _) in signed_routes {
            let concrete = path.replace("{plugin}", "test-gateway");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let r = shop
                .send(method, &concrete, &[], Some(body.as_bytes().to_vec()))
                .await;
            assert_eq!(code(&r), (400, Some("invalid_signature")), "{path}");
        }
        assert_eq!(shop.stored_events().await, 0);
        assert_eq!(amounts(&shop.order(&order).await), (TOTAL, 0, 0));
        shop.drop_database().await;
    }
}

/// A test-gateway dispute event (see the plugin's docs) of dispute `dp_1`, at `created`.
fn dispute(id: &str, kind: &str, reference: &str, currency: &str, created: i64) -> String {
    json!({"id": id, "type": kind, "dispute": "dp_1", "reference": reference, "amount": TOTAL,
           "currency": currency, "reason": "fraudulent", "respond_by": created + 600_000,
           "created": created})
    .to_string()
}

/// The order's disputes: (id, status).
async fn disputes(shop: &Shop, order: &str) -> Vec<(String, String)> {
    shop.order(order).await["payment"]["disputes"]
        .as_array()
        .expect("disputes")
        .iter()
        .map(|d| {
            (
                d["id"].as_str().expect("id").to_owned(),
                d["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

/// The fraud reasons the order was checked out with.
fn fraud_reasons(order: &Value) -> Vec<String> {
    order["decisions"]["fraud"]["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| r["code"].as_str().expect("code").to_owned())
        .collect()
}

#[tokio::test]
async fn a_chargeback_is_kept_with_its_order_and_holds_the_buyers_next_checkout() {
    for database in test_databases().await {
        let shop = shop_with(database, &["test-gateway", "rules-fraud"]).await;
        let order = shop.placed_order().await;
        let reference = shop.reference(&order).await;
        let now = unix_seconds();
        let deliver = |body: String| {
            let shop = &shop;
            async move { shop.deliver_signed(&body).await.body }
        };

        // An inquiry is not a chargeback: the next checkout goes through untouched.
        let r = deliver(dispute(
            "evt_d1",
            "dispute.inquiry",
            &reference,
            "EUR",
            now - 30,
        ))
        .await;
        assert_eq!(
            (r["outcome"].clone(), r["duplicate"].clone()),
            (json!("applied"), json!(false))
        );
        assert_eq!(
            disputes(&shop, &order).await,
            [("dp_1".into(), "inquiry".into())]
        );
        let second = shop.checkout("tok_visa").await;
        assert_eq!(second.status, 201, "{}", second.body);
        assert_eq!(second.body["status"], "placed");
        assert!(fraud_reasons(&second.body).is_empty(), "{}", second.body);

        // It becomes a chargeback; a repeat of that delivery changes nothing.
        let opened = dispute("evt_d2", "dispute.opened", &reference, "EUR", now - 20);
        assert_eq!(deliver(opened.clone()).await["outcome"], "applied");
        let again = deliver(opened).await;
        assert_eq!(
            (again["outcome"].clone(), again["duplicate"].clone()),
            (json!("applied"), json!(true))
        );
        // An inquiry event that arrives late does not move it back; nor does anything after its end.
        let late = dispute("evt_d3", "dispute.inquiry", &reference, "EUR", now - 25);
        assert_eq!(deliver(late).await["outcome"], "ignored_stale");
        assert_eq!(
            disputes(&shop, &order).await,
            [("dp_1".into(), "open".into())]
        );
        assert_eq!(
            deliver(dispute(
                "evt_d4",
                "dispute.lost",
                &reference,
                "EUR",
                now - 10
            ))
            .await["outcome"],
            "applied"
        );
        assert_eq!(
            deliver(dispute(
                "evt_d5",
                "dispute.opened",
                &reference,
                "EUR",
                now - 5
            ))
            .await["outcome"],
            "ignored_stale"
        );
        let o = shop.order(&order).await;
        let kept = &o["payment"]["disputes"][0];
        assert_eq!(
            (
                kept["status"].clone(),
                kept["amount"].clone(),
                kept["reason"].clone()
            ),
            (json!("lost"), json!(TOTAL), json!("fraudulent"))
        );
        assert_eq!(kept["opened_at"], (now - 30) * 1000);
        assert_eq!(kept["updated_at"], (now - 10) * 1000);
        // Each event names the evidence's due date; the row has the last applied one's.
        assert_eq!(kept["respond_by"], (now - 10 + 600_000) * 1000);
        // The dispute changes no money the order holds.
        assert_eq!(amounts(&o), (TOTAL, 0, 0));

        // Disputes of no payment of ours, or in another currency, are kept as events only.
        let stranger = dispute("evt_d6", "dispute.opened", "tg_unknown", "EUR", now);
        assert_eq!(deliver(stranger).await["outcome"], "no_payment");
        let dollars = dispute("evt_d7", "dispute.opened", &reference, "USD", now);
        assert_eq!(deliver(dollars).await["outcome"], "currency_mismatch");
        // A dispute event the connector cannot read is refused, and nothing is stored of it.
        let unreadable = dispute("evt_d8", "dispute.opened", &reference, "EUR", now)
            .replace("\"reason\":\"fraudulent\",", "");
        let r = shop
            .deliver(&unreadable, &signature(WEBHOOK_SECRET, now, &unreadable))
            .await;
        assert_eq!(code(&r), (400, Some("malformed_webhook")), "{}", r.body);
        assert_eq!(shop.stored_events().await, 7);
        assert_eq!(shop.rows_in("disputes").await, 1);
        // The operator's metrics count it where it stands.
        let metrics = shop.metrics().await;
        for line in [
            "cartridge_disputes{status=\"lost\"} 1",
            "cartridge_disputes{status=\"open\"} 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
        }
        // The merchant finds disputed orders by where their dispute stands.
        for (status, found) in [("lost", vec![json!(order)]), ("open", vec![])] {
            let listed = shop
                .admin_get(&format!("/admin/orders?dispute={status}"))
                .await;
            let ids: Vec<Value> = listed["orders"]
                .as_array()
                .expect("orders")
                .iter()
                .map(|o| o["id"].clone())
                .collect();
            assert_eq!(ids, found, "{status}");
        }

        // The buyer's next checkout hears of the chargeback and is held for review.
        let third = shop.checkout("tok_visa").await;
        assert_eq!(third.status, 201, "{}", third.body);
        assert_eq!(third.body["status"], "on_hold", "{}", third.body);
        assert_eq!(fraud_reasons(&third.body), ["chargeback-history"]);
        shop.drop_database().await;
    }
}

/// An event a connector could not read when it arrived (a version before `payment-disputes`
/// stored a dispute event as `other`) is applied when the gateway delivers it again to a
/// connector that can: not lost as a duplicate. An event stored as read is never re-read.
#[tokio::test]
async fn a_dispute_first_stored_unread_is_applied_when_delivered_again() {
    for database in test_databases().await {
        let shop = shop_with(database, &["test-gateway", "rules-fraud"]).await;
        let order = shop.placed_order().await;
        let reference = shop.reference(&order).await;
        let now = unix_seconds();
        // What the earlier connector's deliveries left: one read as nothing in particular, one
        // read as a capture.
        let mut tx = shop.db.begin().await.expect("a transaction");
        for (event, kind) in [("evt_unread", "other"), ("evt_read", "captured")] {
            sqlx::query(
                "INSERT INTO payment_events (plugin, event_id, kind, occurred_at, received_at, \
                 outcome, body_sha256) VALUES ('test-gateway', $1, $2, $3, $3, 'recorded', 'x')",
            )
            .bind(event)
            .bind(kind)
            .bind(now - 60)
            .execute(&mut *tx)
            .await
            .expect("an event stored");
        }
        tx.commit().await.expect("committed");

        let opened = dispute("evt_unread", "dispute.opened", &reference, "EUR", now - 30);
        let r = shop.deliver_signed(&opened).await.body;
        assert_eq!(
            (r["outcome"].clone(), r["duplicate"].clone()),
            (json!("applied"), json!(false)),
            "{r}"
        );
        assert_eq!(
            disputes(&shop, &order).await,
            [("dp_1".into(), "open".into())]
        );
        // Read once, it is a duplicate like any other from then on.
        let again = shop.deliver_signed(&opened).await.body;
        assert_eq!(
            (again["outcome"].clone(), again["duplicate"].clone()),
            (json!("applied"), json!(true))
        );
        let lost = dispute("evt_read", "dispute.lost", &reference, "EUR", now - 10);
        let r = shop.deliver_signed(&lost).await.body;
        assert_eq!(
            (r["outcome"].clone(), r["duplicate"].clone()),
            (json!("recorded"), json!(true)),
            "{r}"
        );
        assert_eq!(
            disputes(&shop, &order).await,
            [("dp_1".into(), "open".into())]
        );
        assert_eq!(shop.stored_events().await, 2);
        shop.drop_database().await;
    }
}

#[tokio::test]
async fn events_out_of_order_never_resurrect_an_order_or_refund_beyond_the_capture() {
    for database in test_databases().await {
        let shop = shop(database).await;

        // A capture reported after the order was cancelled (and its payment voided).
        let order = shop.placed_order().await;
        let reference = shop.reference(&order).await;
        let r = shop
            .admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
            .await;
        assert_eq!(r.body["payment_status"], "voided", "{}", r.body);
        let r = shop
            .deliver_signed(&event("evt_late", "payment.captured", &reference, TOTAL))
            .await;
        assert_eq!(r.body["outcome"], "ignored_stale");
        let o = shop.order(&order).await;
        assert_eq!(
            (o["status"].as_str(), o["payment_status"].as_str()),
            (Some("cancelled"), Some("voided"))
        );
        assert_eq!(amounts(&o), (TOTAL, 0, 0));

        // A refund reported before its capture: kept, then applied when the capture arrives.
        let order = shop.placed_order().await;
        let reference = shop.reference(&order).await;
        let r = shop
            .deliver_signed(&event("evt_r1", "payment.refunded", &reference, 1000))
            .await;
        assert_eq!(r.body["outcome"], "waiting_for_capture");
        assert_eq!(amounts(&shop.order(&order).await), (TOTAL, 0, 0));
        let r = shop
            .deliver_signed(&event("evt_c", "payment.captured", &reference, 3000))
            .await;
        assert_eq!(r.body["outcome"], "applied");
        let o = shop.order(&order).await;
        assert_eq!(amounts(&o), (TOTAL, 3000, 1000));
        assert_eq!(o["payment_status"], "partially_refunded");
        // An older running total arriving late changes nothing; one above the capture waits.
        let r = shop
            .deliver_signed(&event("evt_r0", "payment.refunded", &reference, 800))
            .await;
        assert_eq!(r.body["outcome"], "already_applied");
        let r = shop
            .deliver_signed(&event("evt_r9", "payment.refunded", &reference, 9000))
            .await;
        assert_eq!(r.body["outcome"], "waiting_for_capture");
        let r = shop
            .deliver_signed(&event("evt_r2", "payment.refunded", &reference, 3000))
            .await;
        assert_eq!(r.body["outcome"], "applied");
        let o = shop.order(&order).await;
        assert_eq!(amounts(&o), (TOTAL, 3000, 3000));
        assert_eq!(o["payment_status"], "refunded");

        // Events for payments we do not know, and kinds we only record, are kept and answered.
        let r = shop
            .deliver_signed(&event("evt_x", "payment.captured", "tg_unknown", 5))
            .await;
        assert_eq!(r.body["outcome"], "no_payment");
        let r = shop
            .deliver_signed(&event("evt_f", "payment.failed", &reference, 5))
            .await;
        assert_eq!(r.body["outcome"], "recorded");
        assert_eq!(shop.stored_events().await, 8);
        shop.drop_database().await;
    }
}

#[tokio::test]
async fn a_refund_reported_before_our_own_capture_is_recorded_is_applied_by_it() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let order = shop.placed_order().await;
        let reference = shop.reference(&order).await;
        // The gateway captured and a refund followed (its dashboard, say) while the capture
        // call was still answering: the refund's event comes first.
        let r = shop
            .deliver_signed(&event("evt_r", "payment.refunded", &reference, 1000))
            .await;
        assert_eq!(r.body["outcome"], "waiting_for_capture");
        let r = shop
            .admin(&format!("/admin/orders/{order}/capture"), None, json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let o = shop.order(&order).await;
        assert_eq!(amounts(&o), (TOTAL, TOTAL, 1000), "{o}");
        assert_eq!(o["payment_status"], "partially_refunded");
        // The capture's own event, arriving last, changes nothing more.
        let r = shop
            .deliver_signed(&event("evt_c", "payment.captured", &reference, TOTAL))
            .await;
        assert_eq!(r.body["outcome"], "already_applied");
        assert_eq!(amounts(&shop.order(&order).await), (TOTAL, TOTAL, 1000));
        shop.drop_database().await;
    }
}

/// A capture and a refund of one payment delivered at the same moment, for many payments: the
/// refund is applied whichever commits first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_and_a_refund_delivered_together_are_both_applied() {
    const ORDERS: usize = 24;
    for database in test_databases().await {
        let shop = Arc::new(shop(database).await);
        let mut orders = Vec::new();
        for _ in 0..ORDERS {
            let order = shop.placed_order().await;
            let reference = shop.reference(&order).await;
            orders.push((order, reference));
        }
        let mut deliveries = tokio::task::JoinSet::new();
        for (i, (_, reference)) in orders.iter().enumerate() {
            for body in [
                event(&format!("evt_c{i}"), "payment.captured", reference, TOTAL),
                event(&format!("evt_r{i}"), "payment.refunded", reference, 1000),
            ] {
                let shop = shop.clone();
                deliveries.spawn(async move { shop.deliver_signed(&body).await });
            }
        }
        while let Some(delivered) = deliveries.join_next().await {
            delivered.expect("delivery");
        }
        for (order, _) in &orders {
            let o = shop.order(order).await;
            assert_eq!(amounts(&o), (TOTAL, TOTAL, 1000), "order {order}: {o}");
        }
        Arc::into_inner(shop)
            .expect("no delivery left")
            .drop_database()
            .await;
    }
}

#[tokio::test]
async fn a_payment_voided_at_the_gateway_ships_nothing_and_cancelling_restocks() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let before = shop.available().await;
        let order = shop.placed_order().await;
        let reference = shop.reference(&order).await;
        let r = shop
            .deliver_signed(&event("evt_v", "payment.voided", &reference, TOTAL))
            .await;
        assert_eq!(r.body["outcome"], "applied", "{}", r.body);
        // No money is held: neither shipping nor capturing goes ahead.
        for action in ["fulfil", "capture"] {
            let r = shop
                .admin(&format!("/admin/orders/{order}/{action}"), None, json!({}))
                .await;
            assert_eq!(
                code(&r),
                (409, Some("invalid_transition")),
                "{action}: {}",
                r.body
            );
        }
        let o = shop.order(&order).await;
        assert_eq!(
            (
                o["status"].as_str(),
                o["payment_status"].as_str(),
                o["fulfilment_status"].as_str()
            ),
            (Some("placed"), Some("voided"), Some("unfulfilled"))
        );
        assert_eq!(shop.available().await, before - 3, "still committed");
        // The merchant cancels: no gateway call is needed, the stock comes back.
        let r = shop
            .admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            (r.body["status"].as_str(), r.body["payment_status"].as_str()),
            (Some("cancelled"), Some("voided"))
        );
        assert_eq!(shop.available().await, before);

        // Voided after part of it shipped: the rest cannot ship, and cancelling puts the rest
        // back (the shipped unit stays gone, for the merchant to reconcile).
        let order = shop.placed_order().await;
        let r = shop
            .admin(
                &format!("/admin/orders/{order}/fulfil"),
                None,
                json!({"lines": [{"sku": "TEE", "quantity": 1}]}),
            )
            .await;
        assert_eq!(
            r.body["fulfilment_status"], "partially_fulfilled",
            "{}",
            r.body
        );
        let reference = shop.reference(&order).await;
        let r = shop
            .deliver_signed(&event("evt_v2", "payment.voided", &reference, TOTAL))
            .await;
        assert_eq!(r.body["outcome"], "applied", "{}", r.body);
        let r = shop
            .admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], "cancelled");
        assert_eq!(shop.available().await, before - 1);
        shop.drop_database().await;
    }
}

impl Shop {
    /// Captures all of `order`, without an idempotency key.
    async fn capture(&self, order: &str) -> Reply {
        self.admin(&format!("/admin/orders/{order}/capture"), None, json!({}))
            .await
    }

    /// A placed order whose capture the gateway left unanswered (`gateway-unavailable`): 503,
    /// and the order stays `capturing`. The fault stays set.
    async fn capture_unanswered(&self) -> String {
        let order = self.placed_order().await;
        self.capture_fault("gateway-unavailable").await;
        let r = self.capture(&order).await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );
        assert_eq!(
            self.order(&order).await["payment_status"],
            "capturing",
            "the money may have moved"
        );
        order
    }

    /// Sets the test gateway's `capture-fault` (empty: captures succeed).
    async fn capture_fault(&self, fault: &str) {
        self.gateway_config(json!({"capture-fault": fault})).await;
    }

    /// Sets the test gateway's configuration.
    async fn gateway_config(&self, config: Value) {
        let auth = format!("Bearer {ADMIN}");
        let r = self
            .send(
                Method::PUT,
                "/admin/plugins/test-gateway/config",
                &[("authorization", &auth)],
                Some(config.to_string().into_bytes()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

// ------------------------------------------------------------------------------------------
// Checkouts whose payment outcome was lost

impl Shop {
    /// Checkout attempts not yet settled.
    async fn attempts(&self) -> i64 {
        self.rows_in("checkout_attempts").await
    }

    /// Checks `cart` out with a token the test gateway cannot answer for: maybe authorised.
    async fn lost(&self, cart: &(String, String), key: &str) -> Reply {
        self.checkout_cart(cart, "tok_gatewayUnavailable", key)
            .await
    }

    /// An admin GET's body.
    async fn admin_get(&self, path: &str) -> Value {
        let auth = format!("Bearer {ADMIN}");
        let r = self
            .send(Method::GET, path, &[("authorization", &auth)], None)
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.body
    }

    /// An admin DELETE.
    async fn admin_delete(&self, path: &str) -> Reply {
        let auth = format!("Bearer {ADMIN}");
        self.send(Method::DELETE, path, &[("authorization", &auth)], None)
            .await
    }

    /// `/metrics` as an admin reads it.
    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Runs the recovery sweep as if the clock read `now`.
    async fn recover(&self, now: i64) -> Recovered {
        self.state
            .recover_interrupted_checkouts(now)
            .await
            .expect("recovery")
    }
}

/// A sweep's outcome with only what `count` sets.
fn only(count: fn(&mut Recovered)) -> Recovered {
    let mut expected = Recovered::default();
    count(&mut expected);
    expected
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

#[tokio::test]
async fn an_authorisation_whose_outcome_was_lost_is_looked_up_voided_and_answered_for_its_key() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let later = || now_ms() + INTERRUPTED_AFTER_MS + 60_000;

        // Orders and refusals settle their attempt at once.
        shop.placed_order().await;
        let r = shop.checkout("tok_chargeDeclined").await;
        assert_eq!(code(&r), (402, Some("payment_refused")), "{}", r.body);
        assert_eq!(shop.attempts().await, 0);
        let stock = shop.available().await;

        // The gateway could not answer: it may hold an authorisation. The stock comes back at
        // once; the attempt stays, for a retry with the same key or for the sweep.
        let cart = shop.cart().await;
        let r = shop.lost(&cart, "lost").await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );
        assert_eq!((shop.attempts().await, shop.available().await), (1, stock));
        // Not yet: the shopper may still retry.
        assert_eq!(shop.recover(now_ms()).await, Recovered::default());
        assert_eq!(shop.attempts().await, 1);

        // Ten minutes on, the operator sees it waiting.
        sqlx::query("UPDATE checkout_attempts SET created_at = created_at - $1")
            .bind(INTERRUPTED_AFTER_MS + 1)
            .execute(shop.db.pool())
            .await
            .expect("backdate");
        let metrics = shop.metrics().await;
        assert!(
            metrics.contains("cartridge_checkouts_interrupted 1\n"),
            "{metrics}"
        );
        // The connector finds the authorisation, and it is voided: once, though two hosts
        // sweep at the same time.
        let (one, other) = tokio::join!(shop.recover(later()), shop.recover(later()));
        assert_eq!(
            (one.voided + other.voided, one.deferred + other.deferred),
            (1, 0),
            "{one:?} {other:?}"
        );
        assert_eq!((shop.attempts().await, shop.available().await), (0, stock));
        let metrics = shop.metrics().await;
        assert!(
            metrics.contains("cartridge_checkouts_interrupted 0\n")
                && metrics.contains("cartridge_checkout_recoveries_total{outcome=\"voided\"} "),
            "{metrics}"
        );
        // A retry with the key is answered for good: replaying the attempt at the gateway
        // would hand back the voided authorisation as if it held money.
        let r = shop.lost(&cart, "lost").await;
        assert_eq!(code(&r), (503, Some("checkout_aborted")), "{}", r.body);
        assert_eq!(shop.recover(later()).await, Recovered::default());

        // The gateway holds nothing: only the attempt goes.
        shop.gateway_config(json!({"lookup": "nothing"})).await;
        let r = shop.checkout("tok_gatewayUnavailable").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(shop.recover(later()).await, only(|r| r.released = 1));

        // The gateway cannot tell now: asked again at a later sweep (once the first sweep's
        // lease on the attempt has run out).
        shop.gateway_config(json!({"lookup": "gateway-unavailable"}))
            .await;
        let cart = shop.cart().await;
        let r = shop.lost(&cart, "deferred").await;
        assert_eq!(r.status, 503, "{}", r.body);
        let first = later();
        assert_eq!(shop.recover(first).await, only(|r| r.deferred = 1));
        assert_eq!(shop.attempts().await, 1);
        // Meanwhile the sweep holds the key: a retry waits rather than racing it.
        let r = shop.lost(&cart, "deferred").await;
        assert_eq!(code(&r), (409, Some("request_in_progress")), "{}", r.body);
        shop.gateway_config(json!({"lookup": "held"})).await;
        assert_eq!(
            shop.recover(first + 60_000).await,
            Recovered::default(),
            "leased"
        );
        assert_eq!(
            shop.recover(first + 5 * 60_000).await,
            only(|r| r.voided = 1)
        );
        let r = shop.lost(&cart, "deferred").await;
        assert_eq!(code(&r), (503, Some("checkout_aborted")), "{}", r.body);

        // A connector that cannot look payments up: the stock is released and the key too, so
        // that the shopper's retry may still complete the order; the attempt stays, listed
        // for the operator to reconcile at the gateway, and is not taken up again.
        shop.gateway_config(json!({"lookup": "unsupported"})).await;
        let cart = shop.cart().await;
        let r = shop.lost(&cart, "unknown").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(shop.recover(later()).await, only(|r| r.unresolved = 1));
        assert_eq!(shop.recover(later()).await, Recovered::default());
        let listed = shop.admin_get("/admin/checkout-attempts").await;
        let attempts = listed["attempts"].as_array().expect("attempts");
        assert_eq!(attempts.len(), 1, "{listed}");
        assert_eq!(attempts[0]["state"], "unresolved", "{listed}");
        assert_eq!(attempts[0]["amount"], TOTAL, "{listed}");
        let id = attempts[0]["order_id"].as_str().expect("id").to_owned();
        assert!(
            shop.metrics()
                .await
                .contains("cartridge_checkouts_unresolved 1\n")
        );
        // The retry runs again, and takes the attempt back from the operator.
        let r = shop.lost(&cart, "unknown").await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "ran again: {}",
            r.body
        );
        let listed = shop.admin_get("/admin/checkout-attempts").await;
        assert_eq!(listed["attempts"][0]["state"], "in_flight", "{listed}");
        let dismiss = format!("/admin/checkout-attempts/{id}");
        let r = shop.admin_delete(&dismiss).await;
        assert_eq!(code(&r), (409, Some("invalid_state")), "{}", r.body);
        // Unresolved again; reconciled by the operator, then dismissed, once.
        assert_eq!(shop.recover(later()).await, only(|r| r.unresolved = 1));
        let r = shop.admin_delete(&dismiss).await;
        assert_eq!(
            (r.status, &r.body["dismissed"]),
            (200, &json!(id)),
            "{}",
            r.body
        );
        assert_eq!(shop.attempts().await, 0);
        let r = shop.admin_delete(&dismiss).await;
        assert_eq!(code(&r), (404, Some("not_found")), "{}", r.body);

        // A gateway that has not answered for a day (or a connector no longer installed): the
        // sweeps stop asking, hand the attempt to the operator and let the key go, instead of
        // holding it and asking forever.
        shop.gateway_config(json!({"lookup": "gateway-unavailable"}))
            .await;
        let cart = shop.cart().await;
        let r = shop.lost(&cart, "a day").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(shop.recover(later()).await, only(|r| r.deferred = 1));
        let r = shop.lost(&cart, "a day").await;
        assert_eq!(code(&r), (409, Some("request_in_progress")), "{}", r.body);
        let a_day_on = now_ms() + GIVE_UP_AFTER_MS + 60_000;
        assert_eq!(shop.recover(a_day_on).await, only(|r| r.unresolved = 1));
        assert_eq!(
            shop.recover(a_day_on + 10 * 60_000).await,
            Recovered::default(),
            "not asked again"
        );
        let listed = shop.admin_get("/admin/checkout-attempts").await;
        assert_eq!(listed["attempts"][0]["state"], "unresolved", "{listed}");
        let r = shop.lost(&cart, "a day").await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "the key is free again: {}",
            r.body
        );
        assert_eq!(shop.available().await, stock);
        shop.drop_database().await;
    }
}

#[tokio::test]
async fn a_capture_left_unanswered_is_settled_by_the_sweep_from_what_the_gateway_holds() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let later = || now_ms() + INTERRUPTED_AFTER_MS + 60_000;

        // The capture's answer was lost, and neither a retry nor a webhook came. Ten minutes on
        // the sweep asks the gateway, and the order takes the state it says.
        for (lookup, settled, status) in [
            // Captured: the capture is recorded.
            ("captured", only(|r| r.captured = 1), "captured"),
            // Never captured: the order is authorized again (it can be cancelled, below).
            ("held", only(|r| r.uncaptured = 1), "authorized"),
            // Voided at the gateway: so is the order's payment, as the webhook would make it.
            ("voided", only(|r| r.uncaptured = 1), "voided"),
            // The gateway cannot tell: the order stays capturing, for a retry or a webhook.
            ("unsupported", only(|r| r.deferred = 1), "capturing"),
        ] {
            let order = shop.capture_unanswered().await;
            shop.gateway_config(json!({"lookup": lookup})).await;
            assert_eq!(
                shop.recover(now_ms()).await,
                Recovered::default(),
                "not yet"
            );
            assert_eq!(shop.recover(later()).await, settled, "{lookup}");
            let o = shop.order(&order).await;
            assert_eq!(o["payment_status"], status, "{lookup}: {o}");
            match lookup {
                "captured" => assert_eq!(amounts(&o), (TOTAL, TOTAL, 0)),
                "held" => {
                    let r = shop
                        .admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
                        .await;
                    assert_eq!(r.body["payment_status"], "voided", "{}", r.body);
                }
                _ => {}
            }
        }
        shop.drop_database().await;
    }
}

#[tokio::test]
async fn a_capture_whose_outcome_is_unknown_is_never_voided_and_is_settled_by_a_retry_or_webhook() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let states = |o: &Value| {
            (
                o["status"].as_str().map(str::to_owned),
                o["payment_status"].as_str().map(str::to_owned),
            )
        };
        let placed_capturing = (Some("placed".to_owned()), Some("capturing".to_owned()));

        // The gateway times out: the money may have moved, so the order stays `capturing` and
        // a cancel (which would void) is refused; a retry asks the gateway again.
        let order = shop.capture_unanswered().await;
        let r = shop.capture(&order).await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );
        assert_eq!(states(&shop.order(&order).await), placed_capturing);
        let r = shop
            .admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
            .await;
        assert_eq!(code(&r), (409, Some("invalid_transition")), "{}", r.body);
        // A retry that fails for its own reasons cannot know what the first attempt did: the
        // order stays `capturing` (were it handed back, a cancel could void a capture).
        let r = shop
            .admin(
                &format!("/admin/orders/{order}/capture"),
                None,
                json!({"amount": TOTAL + 1}),
            )
            .await;
        assert_eq!(
            code(&r),
            (409, Some("capture_exceeds_authorized")),
            "{}",
            r.body
        );
        assert_eq!(states(&shop.order(&order).await), placed_capturing);
        shop.capture_fault("").await;
        let r = shop.capture(&order).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["payment_status"], "captured");
        assert_eq!(amounts(&r.body), (TOTAL, TOTAL, 0));

        // Or the gateway's webhook reports the capture it did make.
        let order = shop.placed_order().await;
        shop.capture_fault("gateway-unavailable").await;
        let r = shop.capture(&order).await;
        assert_eq!(r.status, 503, "{}", r.body);
        let reference = shop.reference(&order).await;
        let r = shop
            .deliver_signed(&event(
                "evt_late_capture",
                "payment.captured",
                &reference,
                TOTAL,
            ))
            .await;
        assert_eq!(r.body["outcome"], "applied", "{}", r.body);
        let o = shop.order(&order).await;
        assert_eq!(o["payment_status"], "captured");
        assert_eq!(amounts(&o), (TOTAL, TOTAL, 0));

        // A definite refusal gives the claim back: the order can be cancelled and voided.
        let order = shop.placed_order().await;
        shop.capture_fault("invalid-state").await;
        let r = shop.capture(&order).await;
        assert_eq!(code(&r), (402, Some("payment_refused")), "{}", r.body);
        assert_eq!(
            states(&shop.order(&order).await),
            (Some("placed".to_owned()), Some("authorized".to_owned()))
        );
        let r = shop
            .admin(&format!("/admin/orders/{order}/cancel"), None, Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["payment_status"], "voided");
        shop.drop_database().await;
    }
}

#[tokio::test]
async fn a_retried_capture_asks_the_gateway_for_the_amount_the_first_attempt_asked() {
    for database in test_databases().await {
        let shop = shop(database).await;
        let part = TOTAL / 2;
        let order = shop.placed_order().await;
        let path = format!("/admin/orders/{order}/capture");

        // A partial capture times out: its outcome is unknown, the order stays `capturing`.
        shop.capture_fault("gateway-unavailable").await;
        let r = shop.admin(&path, None, json!({"amount": part})).await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );
        // The retry is the same gateway operation: another amount is refused before the
        // gateway is asked (it would still be unavailable, a 503), and the claim stays.
        let r = shop.admin(&path, None, json!({"amount": part + 1})).await;
        assert_eq!(code(&r), (409, Some("capture_in_progress")), "{}", r.body);
        assert_eq!(shop.order(&order).await["payment_status"], "capturing");
        let r = shop.admin(&path, None, json!({"amount": TOTAL})).await;
        assert_eq!(code(&r), (409, Some("capture_in_progress")), "{}", r.body);
        // The same amount re-enters (and meets the gateway's fault again).
        let r = shop.admin(&path, None, json!({"amount": part})).await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );

        // Naming no amount retries the one in progress, not all that was authorised.
        shop.capture_fault("").await;
        let r = shop.capture(&order).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["payment_status"], "captured");
        assert_eq!(amounts(&r.body), (TOTAL, part, 0));
        shop.drop_database().await;
    }
}

// ------------------------------------------------------------------------------------------
// 4. localstripe

/// A form POST to localstripe; (status, body).
async fn stripe(
    http: &reqwest::Client,
    server: &LocalStripe,
    path: &str,
    form: &[(&str, &str)],
    key: Option<&str>,
) -> (u16, Value) {
    let mut request = http
        .post(format!("{}{path}", server.url()))
        .bearer_auth(SECRET_KEY)
        .form(form);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.expect("localstripe answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads one HTTP request from a connection and answers 200: (headers, body).
async fn receive_one(listener: &tokio::net::TcpListener) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut socket, _) = listener.accept().await.expect("accept");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed early");
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("length"));
        if data.len() >= end + 4 + length {
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .expect("answer");
            return (head, data[end + 4..end + 4 + length].to_vec());
        }
    }
}

fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<_>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the Stripe connector can rely on in localstripe, and where it differs from Stripe.
#[tokio::test]
async fn localstripe_takes_a_manual_capture_partial_refunds_and_signs_its_webhooks() {
    let Some(server) = LocalStripe::start() else {
        return;
    };
    let http = reqwest::Client::new();
    let hooks = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!("http://{}/hook", hooks.local_addr().expect("addr"));
    let config = http
        .post(format!("{}/_config/webhooks/cartridge", server.url()))
        .form(&[
            ("url", hook_url.as_str()),
            ("secret", "whsec_local"),
            ("events[]", "payment_intent.succeeded"),
        ])
        .send()
        .await
        .expect("config");
    assert_eq!(config.status(), 200);

    // Authorise: a PaymentIntent with manual capture and a test payment method, confirmed.
    let (status, pi) = stripe(
        &http,
        &server,
        "/v1/payment_intents",
        &[
            ("amount", "5000"),
            ("currency", "eur"),
            ("capture_method", "manual"),
            ("payment_method", "pm_card_visa"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, &pi["status"]),
        (200, &json!("requires_confirmation")),
        "{pi}"
    );
    let id = pi["id"].as_str().expect("id").to_owned();
    let (status, pi) = stripe(
        &http,
        &server,
        &format!("/v1/payment_intents/{id}/confirm"),
        &[],
        None,
    )
    .await;
    assert_eq!(
        (status, &pi["status"]),
        (200, &json!("requires_capture")),
        "{pi}"
    );

    // Capture part of it: localstripe books the released rest as a refund on the charge.
    let (status, pi) = stripe(
        &http,
        &server,
        &format!("/v1/payment_intents/{id}/capture"),
        &[("amount_to_capture", "3000")],
        None,
    )
    .await;
    assert_eq!((status, &pi["status"]), (200, &json!("succeeded")), "{pi}");
    assert_eq!(pi["latest_charge"]["amount_refunded"], 2000, "{pi}");

    // The capture's webhook: signed as Stripe signs, t=…,v1=HMAC-SHA256(secret, "t.body").
    let (head, body) =
        tokio::time::timeout(std::time::Duration::from_secs(10), receive_one(&hooks))
            .await
            .expect("a webhook within 10 s");
    let header = head
        .lines()
        .find_map(|l| l.strip_prefix("stripe-signature:"))
        .expect("a Stripe-Signature header")
        .trim()
        .to_owned();
    let (t, v1) = header
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .expect("t=…,v1=…");
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&body);
    assert_eq!(hmac_sha256_hex(b"whsec_local", &signed), v1);
    let delivered: Value = serde_json::from_slice(&body).expect("JSON event");
    assert_eq!(delivered["type"], "payment_intent.succeeded");
    assert_eq!(delivered["data"]["object"]["id"], id.as_str());

    // Two partial refunds. localstripe ignores Idempotency-Key: the same key twice refunds
    // twice, so the connector cannot lean on the fake for that — the host's keys must.
    let mut refunds = Vec::new();
    for _ in 0..2 {
        let (status, refund) = stripe(
            &http,
            &server,
            "/v1/refunds",
            &[("payment_intent", id.as_str()), ("amount", "1000")],
            Some("same-key"),
        )
        .await;
        assert_eq!(
            (status, &refund["status"]),
            (200, &json!("succeeded")),
            "{refund}"
        );
        refunds.push(refund["id"].as_str().expect("refund id").to_owned());
    }
    assert_ne!(refunds[0], refunds[1], "localstripe does not replay by key");
    let pi: Value = http
        .get(format!("{}/v1/payment_intents/{id}", server.url()))
        .bearer_auth(SECRET_KEY)
        .send()
        .await
        .expect("retrieve")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        pi["latest_charge"]["amount_refunded"], 4000,
        "the released 2,000 and two refunds of 1,000: {pi}"
    );

    // A decline: Stripe's code, but always typed invalid_request_error and without a
    // decline_code.
    let (_, pi) = stripe(
        &http,
        &server,
        "/v1/payment_intents",
        &[
            ("amount", "5000"),
            ("currency", "eur"),
            ("capture_method", "manual"),
            ("payment_method", "pm_card_chargeCustomerFail"),
        ],
        None,
    )
    .await;
    let declined = pi["id"].as_str().expect("id").to_owned();
    let (status, error) = stripe(
        &http,
        &server,
        &format!("/v1/payment_intents/{declined}/confirm"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 402, "{error}");
    assert_eq!(error["error"]["code"], "card_declined");
    drop(server);
}
