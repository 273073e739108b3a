//! Payments end to end: idempotent capture, cancel and refund; the money invariants under
//! concurrency; payment webhooks (signatures, deduplication, events out of order).
//!
//! The real application on port 0 with the test gateway plugin, a fresh database per test:
//! SQLite always, PostgreSQL when `CARTRIDGE_TEST_DATABASE_URL` is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cartridge_host::api::AppState;
use cartridge_host::db::Db;
use cartridge_host::plugin::{Runtime, RuntimeConfig};
use cartridge_host::server::{Application, load_plugins};
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
    let dir = tempfile::tempdir().expect("tempdir");
    plugins().bundle_into("test-gateway", dir.path());
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let loaded = load_plugins(&runtime, dir.path()).expect("load");
    let db = Db::connect(&database.url).await.expect("connect");
    db.migrate().await.expect("migrate");
    let state = AppState::new(db.clone(), loaded);
    state.add_admin_token("test", ADMIN).await.expect("token");
    let app = Application::build(SocketAddr::from(([127, 0, 0, 1], 0)), state)
        .await
        .expect("bind");
    let addr = app.local_addr().expect("addr");
    tokio::spawn(app.run());
    let shop = Shop {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        db,
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
        let body = json!({
            "email": "ada@example.com",
            "payment_token": token,
            "shipping_address": {"name": "Ada", "line1": "Main St 1", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"},
        });
        self.send(
            Method::POST,
            &format!("/store/carts/{cart}/checkout"),
            &[("x-cart-token", &cart_token), ("idempotency-key", "pay")],
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

        // Cancelling after the capture refunds what is left (3,000), once.
        let cancel = format!("/admin/orders/{order}/cancel");
        let first = shop.admin(&cancel, Some("can-1"), Value::Null).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_eq!(
            (&first.body["status"], &first.body["payment_status"]),
            (&json!("cancelled"), &json!("refunded"))
        );
        assert_eq!(amounts(&first.body), (TOTAL, 4000, 4000));
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
                tokio::spawn(async move {
                    shop.admin(&format!("/admin/orders/{order}/capture"), None, json!({}))
                        .await
                })
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
        sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM payment_events")
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
        let mut first = Vec::new();
        for task in tasks {
            let r = task.await.expect("task");
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
        let r = shop
            .admin(&format!("/admin/orders/{order}/capture"), None, json!({}))
            .await;
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
                signature(WEBHOOK_SECRET, now - 301, &body),
            ),
            (
                "from the future",
                body.as_str(),
                signature(WEBHOOK_SECRET, now + 301, &body),
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
