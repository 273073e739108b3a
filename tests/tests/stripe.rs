//! The Stripe connector end to end, against localstripe: a real `cartridge serve` process (its
//! logs captured), the connector uploaded, granted `http:127.0.0.1:<port>` and `secrets`,
//! configured and activated through the admin API exactly as an operator would, then
//! checkouts, captures, refunds, voids, declines, concurrent retries and signed webhooks.
//! SQLite always, PostgreSQL when `CARTRIDGE_TEST_DATABASE_URL` is set.
//!
//! Every test ends with the PCI sweep: the database (SQLite files, or every PostgreSQL row),
//! the host's captured log and the plugin's admin views must not contain a card number, a
//! payment token the test used, the API key or the webhook secret.
//!
//! Without localstripe's venv a test fails on CI and is skipped, loudly, elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::response::IntoResponse;
use cartridge_host::api::AppState;
use cartridge_host::db::Db;
use cartridge_host::plugin::{Runtime, RuntimeConfig, SecretPolicy};
use cartridge_host::recovery::{INTERRUPTED_AFTER_MS, Recovered};
use cartridge_host::registry::{Registry, RegistryConfig};
use cartridge_tests::localstripe::LocalStripe;
use cartridge_tests::{TestDatabase, plugins, repo_root, test_databases};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN: &str = "adm_stripe_e2e";
/// 3 × 19.99.
const TOTAL: i64 = 5997;
const STOCK: i64 = 1000;
/// Test card numbers: never typed anywhere in these tests except as a token to be refused.
const CARD_NUMBERS: [&str; 2] = ["4242424242424242", "4000000000000002"];

/// The `cartridge` binary of this workspace, built (once per test process) with the cargo
/// that runs the tests. A process of its own, so that its log can be captured and searched.
fn cartridge_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .current_dir(repo_root())
            .args([
                "build",
                "-p",
                "cartridge-host",
                "--bin",
                "cartridge",
                "--quiet",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo to build cartridge: {e}"));
        assert!(
            output.status.success(),
            "building cartridge failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| repo_root().join("target"), PathBuf::from);
        let binary = target.join("debug").join("cartridge");
        assert!(binary.is_file(), "no binary at {}", binary.display());
        binary
    })
}

fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).expect("seconds"))
        .expect("clock")
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

/// A `Stripe-Signature` header for `body` signed with `secret` at `t`.
fn stripe_signature(secret: &str, t: i64, body: &str) -> String {
    let v1 = hmac_sha256_hex(secret.as_bytes(), format!("{t}.{body}").as_bytes());
    format!("t={t},v1={v1}")
}

struct Reply {
    status: u16,
    body: Value,
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

/// A running store: `cartridge serve` on a fresh database with the Stripe connector active
/// and pointed at its own localstripe; a tee at EUR 19.99, [`STOCK`] in stock.
struct Store {
    base: String,
    http: reqwest::Client,
    child: Child,
    log: PathBuf,
    stripe: LocalStripe,
    /// Taken by [`Store::finish`].
    database: Option<TestDatabase>,
    /// The test's own connection to the host's database.
    db: Db,
    api_key: String,
    webhook_secret: String,
    /// Payment tokens the test sent; the sweep looks for them.
    tokens: std::sync::Mutex<Vec<String>>,
    /// Where the secret files are.
    secrets_dir: tempfile::TempDir,
    /// Between the connector and localstripe, when the test needs to lose an answer.
    proxy: Option<Proxy>,
    data_dir: tempfile::TempDir,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `cartridge serve` on `port`, its output appended to `log`.
fn spawn_host(port: u16, data: &Path, secrets: &Path, database_url: &str, log: &Path) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(cartridge_binary())
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data.join("data"))
        .arg("--plugins-dir")
        .arg(data.join("plugins-installed"))
        .args(["--database-url", database_url, "--call-log-every", "1"])
        .arg("--secrets-dir")
        .arg(secrets)
        .env("CARTRIDGE_ADMIN_TOKEN", ADMIN)
        .env("CARTRIDGE_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log file"))
        .stderr(log_file)
        .spawn()
        .expect("start cartridge")
}

/// An HTTP proxy between the connector and localstripe. It forwards every request; it can
/// lose the answer to the next `POST` whose path ends a certain way: localstripe does the step,
/// the connector never learns it.
struct Proxy {
    url: String,
    port: u16,
    lose: Arc<std::sync::Mutex<Option<(&'static str, Lost)>>>,
    held: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// How an answer is lost.
#[derive(Clone, Copy)]
enum Lost {
    /// Never answered: the caller waits until it is killed.
    Hang,
    /// Answered 502, as a load balancer that lost the connection to Stripe would.
    BadGateway,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    lose: Arc<std::sync::Mutex<Option<(&'static str, Lost)>>>,
    held: Arc<tokio::sync::Notify>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            lose: Arc::default(),
            held: Arc::default(),
        };
        let (lose, held) = (state.lose.clone(), state.held.clone());
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            port,
            lose,
            held,
            task,
        }
    }

    /// Loses the answer to the next `POST` whose path ends with `suffix`.
    fn lose_next(&self, suffix: &'static str, how: Lost) {
        *self.lose.lock().expect("lock") = Some((suffix, how));
    }

    fn hold_next_authorisation(&self) {
        self.lose_next("/v1/payment_intents", Lost::Hang);
    }

    /// Waits until localstripe has answered the held authorisation.
    async fn authorised_at_the_gateway(&self) {
        tokio::time::timeout(Duration::from_secs(60), self.held.notified())
            .await
            .expect("the authorisation reached localstripe within 60 s");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{Method as HttpMethod, header};
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = proxy
        .http
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    let lost = {
        let mut lose = proxy.lose.lock().expect("lock");
        match *lose {
            Some((suffix, how))
                if parts.method == HttpMethod::POST && parts.uri.path().ends_with(suffix) =>
            {
                *lose = None;
                Some(how)
            }
            _ => None,
        }
    };
    match lost {
        Some(Lost::Hang) => {
            proxy.held.notify_one();
            std::future::pending::<()>().await;
        }
        Some(Lost::BadGateway) => return axum::http::StatusCode::BAD_GATEWAY.into_response(),
        None => {}
    }
    let mut response = (status, bytes).into_response();
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

impl Store {
    /// `None` when localstripe is not installed (and this is not CI).
    async fn start(database: TestDatabase) -> Option<Store> {
        Self::start_with(database, false).await
    }

    /// [`Store::start`] with a [`Proxy`] between the connector and localstripe.
    async fn start_proxied(database: TestDatabase) -> Option<Store> {
        Self::start_with(database, true).await
    }

    async fn start_with(database: TestDatabase, proxied: bool) -> Option<Store> {
        let stripe = LocalStripe::start()?;
        let proxy = match proxied {
            true => Some(Proxy::start(stripe.url()).await),
            false => None,
        };
        let data = tempfile::tempdir().expect("tempdir");
        let secrets = tempfile::tempdir().expect("tempdir");
        let log = data.path().join("cartridge.log");
        let port = free_port();
        let child = spawn_host(port, data.path(), secrets.path(), &database.url, &log);
        let db = Db::connect(&database.url).await.expect("connect");
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let store = Store {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            child,
            log,
            stripe,
            database: Some(database),
            db,
            api_key: format!("sk_test_e2e_{unique}"),
            webhook_secret: format!("whsec_e2e_{unique}"),
            tokens: std::sync::Mutex::new(Vec::new()),
            secrets_dir: secrets,
            proxy,
            data_dir: data,
        };
        store.wait_until_healthy().await;
        store.install_connector().await;
        store.seed().await;
        Some(store)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cartridge did not start:\n{}", self.log_text());
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request");
        Reply {
            status: response.status().as_u16(),
            body: response.json().await.unwrap_or(Value::Null),
        }
    }

    async fn admin(&self, method: Method, path: &str, key: Option<&str>, body: Value) -> Reply {
        let auth = format!("Bearer {ADMIN}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend(key.map(|k| ("idempotency-key", k)));
        let body = (!body.is_null()).then_some(body);
        self.send(method, path, &headers, body.as_ref()).await
    }

    /// The port the connector calls: the proxy's, or localstripe's.
    fn stripe_port(&self) -> u16 {
        if let Some(proxy) = &self.proxy {
            return proxy.port;
        }
        self.stripe
            .url()
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("localstripe port")
    }

    /// The base URL the connector calls: the proxy's, or localstripe's.
    fn stripe_base(&self) -> &str {
        self.proxy
            .as_ref()
            .map_or_else(|| self.stripe.url(), |p| p.url.as_str())
    }

    /// Points localstripe's webhooks nowhere: the store hears nothing from Stripe.
    async fn silence_webhooks(&self) {
        let nowhere = format!("http://127.0.0.1:{}/nowhere", free_port());
        let r = self
            .http
            .post(format!("{}/_config/webhooks/cartridge", self.stripe.url()))
            .form(&[
                ("url", nowhere.as_str()),
                ("secret", self.webhook_secret.as_str()),
                ("events[]", "payment_intent.succeeded"),
            ])
            .send()
            .await
            .expect("localstripe webhook config");
        assert_eq!(r.status(), 200);
    }

    /// Kills the host at once (SIGKILL: nothing of it runs after).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the host again on the same database, on a new port.
    async fn restart(&mut self) {
        self.kill();
        let port = free_port();
        self.child = spawn_host(
            port,
            self.data_dir.path(),
            self.secrets_dir.path(),
            &self.database().url,
            &self.log,
        );
        self.base = format!("http://127.0.0.1:{port}");
        self.wait_until_healthy().await;
    }

    /// Runs the recovery sweep of interrupted checkouts as the host's maintenance task does,
    /// but as if the clock read `now`: an app of the test's own on the host's database,
    /// serving what the registry there says, with the host's secrets.
    async fn recover(&self, now: i64) -> Recovered {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let registry = Registry::open(
            self.db.clone(),
            Arc::new(runtime),
            RegistryConfig {
                secrets: SecretPolicy {
                    dirs: vec![self.secrets_dir.path().to_owned()],
                },
                ..RegistryConfig::default()
            },
        )
        .await
        .expect("registry");
        AppState::new(self.db.clone(), registry)
            .recover_interrupted_checkouts(now)
            .await
            .expect("recovery")
    }

    /// What an operator does: upload, grant, set secrets and configuration, activate.
    async fn install_connector(&self) {
        let manifest = plugins().manifest_text("stripe-connector");
        let asked = r#"capabilities = ["http:api.stripe.com", "secrets"]"#;
        assert!(manifest.contains(asked), "the manifest asks for {asked}");
        let http = format!("http:127.0.0.1:{}", self.stripe_port());
        let manifest = manifest.replace(asked, &format!(r#"capabilities = ["{http}", "secrets"]"#));
        let form = reqwest::multipart::Form::new()
            .text("manifest", manifest)
            .part(
                "component",
                reqwest::multipart::Part::bytes(plugins().wasm_bytes("stripe-connector"))
                    .file_name("stripe_connector.wasm"),
            );
        let r = self
            .http
            .post(format!("{}/admin/plugins", self.base))
            .bearer_auth(ADMIN)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        let status = r.status().as_u16();
        assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());

        // Not activatable before its capabilities are granted.
        let activate = json!({"version": "1.0.0"});
        let r = self
            .admin(
                Method::POST,
                "/admin/plugins/stripe/activate",
                None,
                activate.clone(),
            )
            .await;
        assert!(r.status >= 400, "activated without grants: {}", r.body);

        for capability in [http.as_str(), "secrets"] {
            let r = self
                .admin(
                    Method::PUT,
                    &format!("/admin/plugins/stripe/grants/{capability}"),
                    None,
                    Value::Null,
                )
                .await;
            assert_eq!(r.status, 200, "grant {capability}: {}", r.body);
        }
        for (name, value) in [
            ("api-key", &self.api_key),
            ("webhook-secret", &self.webhook_secret),
        ] {
            let path = self.secrets_dir.path().join(name);
            std::fs::write(&path, format!("{value}\n")).expect("secret file");
            let r = self
                .admin(
                    Method::PUT,
                    &format!("/admin/plugins/stripe/secrets/{name}"),
                    None,
                    json!({"file": path}),
                )
                .await;
            assert_eq!(r.status, 200, "secret {name}: {}", r.body);
        }
        let r = self
            .admin(
                Method::PUT,
                "/admin/plugins/stripe/config",
                None,
                json!({"api-base": self.stripe_base()}),
            )
            .await;
        assert_eq!(r.status, 200, "config: {}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/admin/plugins/stripe/activate",
                None,
                activate,
            )
            .await;
        assert_eq!(r.status, 200, "activate: {}", r.body);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self
                .admin(Method::GET, "/admin/plugins/stripe", None, Value::Null)
                .await;
            if r.body["serving_here"]["version"] == "1.0.0" {
                break;
            }
            assert!(Instant::now() < deadline, "never served: {}", r.body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // localstripe delivers its events to the store, signed with the webhook secret.
        let r = self
            .http
            .post(format!("{}/_config/webhooks/cartridge", self.stripe.url()))
            .form(&[
                (
                    "url",
                    format!("{}/webhooks/payments/stripe", self.base).as_str(),
                ),
                ("secret", self.webhook_secret.as_str()),
                ("events[]", "payment_intent.succeeded"),
                ("events[]", "payment_intent.payment_failed"),
            ])
            .send()
            .await
            .expect("localstripe webhook config");
        assert_eq!(r.status(), 200);
    }

    async fn seed(&self) {
        let r = self
            .admin(
                Method::POST,
                "/admin/locations",
                None,
                json!({"id": "eu", "name": "Berlin"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/admin/products",
                None,
                json!({"title": "Tee", "variants": [{"sku": "TEE", "title": "M", "prices": {"EUR": 1999}}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = self
            .admin(
                Method::POST,
                "/admin/inventory/TEE/eu/adjust",
                None,
                json!({"delta": STOCK, "reason": "receive"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// A cart with 3 tees: (id, token).
    async fn cart(&self) -> (String, String) {
        let r = self
            .send(
                Method::POST,
                "/store/carts",
                &[],
                Some(&json!({"currency": "EUR"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let cart = r.body["id"].as_str().expect("cart").to_owned();
        let token = r.body["token"].as_str().expect("token").to_owned();
        let r = self
            .send(
                Method::POST,
                &format!("/store/carts/{cart}/lines"),
                &[("x-cart-token", &token)],
                Some(&json!({"sku": "TEE", "quantity": 3})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (cart, token)
    }

    async fn checkout_cart(
        &self,
        cart: &(String, String),
        payment_token: &str,
        key: &str,
    ) -> Reply {
        if let Ok(mut tokens) = self.tokens.lock()
            && !tokens.iter().any(|t| t == payment_token)
        {
            tokens.push(payment_token.to_owned());
        }
        let body = json!({
            "email": "ada@example.com",
            "payment_token": payment_token,
            "shipping_address": {"name": "Ada", "line1": "Main St 1", "city": "Berlin",
                                 "postal_code": "10115", "country": "DE"},
        });
        self.send(
            Method::POST,
            &format!("/store/carts/{}/checkout", cart.0),
            &[("x-cart-token", &cart.1), ("idempotency-key", key)],
            Some(&body),
        )
        .await
    }

    async fn checkout(&self, payment_token: &str) -> Reply {
        let cart = self.cart().await;
        self.checkout_cart(&cart, payment_token, "pay").await
    }

    /// A placed order paid with `pm_card_visa`: (id, PaymentIntent id).
    async fn placed_order(&self) -> (String, String) {
        let r = self.checkout("pm_card_visa").await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["payment"]["authorized"], TOTAL, "{}", r.body);
        let id = r.body["id"].as_str().expect("id").to_owned();
        let order = self.order(&id).await;
        let reference = order["payment"]["gateway_reference"]
            .as_str()
            .expect("reference")
            .to_owned();
        (id, reference)
    }

    async fn order(&self, id: &str) -> Value {
        let r = self
            .admin(
                Method::GET,
                &format!("/admin/orders/{id}"),
                None,
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    async fn orders(&self) -> Vec<Value> {
        let r = self
            .admin(Method::GET, "/admin/orders", None, Value::Null)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["orders"].as_array().cloned().expect("orders")
    }

    async fn available(&self) -> i64 {
        let r = self
            .admin(Method::GET, "/admin/inventory/TEE", None, Value::Null)
            .await;
        r.body["levels"][0]["available"]
            .as_i64()
            .expect("available")
    }

    /// `GET` on localstripe's API.
    async fn stripe_get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.stripe.url()))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("localstripe answers")
            .json()
            .await
            .expect("JSON")
    }

    /// The PaymentIntents localstripe holds.
    async fn payment_intents(&self) -> Vec<Value> {
        self.stripe_get("/v1/payment_intents?limit=100").await["data"]
            .as_array()
            .cloned()
            .expect("a list")
    }

    async fn deliver(&self, body: &str, signature: &str) -> Reply {
        let mut request = self
            .http
            .post(format!("{}/webhooks/payments/stripe", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if !signature.is_empty() {
            request = request.header("stripe-signature", signature);
        }
        let response = request.send().await.expect("deliver");
        Reply {
            status: response.status().as_u16(),
            body: response.json().await.unwrap_or(Value::Null),
        }
    }

    /// (event id, kind, outcome) of every stored payment event.
    async fn payment_events(&self) -> Vec<(String, String, String)> {
        use sqlx::Row;
        sqlx::query("SELECT event_id, kind, outcome FROM payment_events ORDER BY event_id")
            .fetch_all(self.db.pool())
            .await
            .expect("events")
            .iter()
            .map(|r| {
                (
                    r.try_get("event_id").expect("id"),
                    r.try_get("kind").expect("kind"),
                    r.try_get("outcome").expect("outcome"),
                )
            })
            .collect()
    }

    /// Everything the database holds, as text (PostgreSQL) or bytes (SQLite's files).
    async fn database_contents(&self) -> Vec<u8> {
        if let Some(path) = self.database().url.strip_prefix("sqlite://") {
            let file = Path::new(path);
            let dir = file.parent().expect("a directory");
            let name = file
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
                // The database, its write-ahead log and shared memory.
                if entry.file_name().to_string_lossy().starts_with(&name) {
                    bytes.extend(std::fs::read(entry.path()).expect("read"));
                }
            }
            return bytes;
        }
        use sqlx::Row;
        let tables: Vec<String> = sqlx::query(
            "SELECT CAST(table_name AS TEXT) AS table_name FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        )
        .fetch_all(self.db.pool())
        .await
        .expect("tables")
        .iter()
        .map(|r| r.try_get("table_name").expect("name"))
        .collect();
        assert!(tables.iter().any(|t| t == "orders"), "{tables:?}");
        let mut text = String::new();
        for table in tables {
            let rows = sqlx::query(&format!(
                "SELECT CAST(t AS TEXT) AS row FROM \"{table}\" AS t"
            ))
            .fetch_all(self.db.pool())
            .await
            .expect("rows");
            for row in rows {
                text.push_str(&row.try_get::<String, _>("row").expect("row"));
                text.push('\n');
            }
        }
        text.into_bytes()
    }

    /// The PCI sweep: no card number, payment token, API key or webhook secret in the
    /// database, the host's log or the plugin's admin views. `evidence` must be found in the
    /// database (so that the search covers real data), and the log must hold the connector's
    /// own log lines (so that it covers what the plugin logged).
    async fn assert_nothing_secret_leaked(&self, evidence: &str) {
        let mut needles: Vec<String> = CARD_NUMBERS.iter().map(|s| (*s).to_owned()).collect();
        needles.extend(self.tokens.lock().map(|t| t.clone()).unwrap_or_default());
        needles.push(self.api_key.clone());
        needles.push(self.webhook_secret.clone());

        let database = self.database_contents().await;
        assert!(
            contains(&database, evidence),
            "the {} sweep does not see {evidence:?}: it would prove nothing",
            self.database().backend
        );
        let log = self.log_text();
        assert!(
            log.contains("stripe@1.0.0") && log.contains("Authorize"),
            "the captured log lacks the connector's lines:\n{log}"
        );
        let mut views = String::new();
        for path in [
            "/admin/plugins/stripe",
            "/admin/plugins/stripe/audit",
            "/admin/plugins/stripe/calls",
            "/admin/plugins",
        ] {
            let r = self.admin(Method::GET, path, None, Value::Null).await;
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            views.push_str(&r.body.to_string());
        }
        for needle in &needles {
            assert!(
                !contains(&database, needle),
                "{needle:?} is in the {} database",
                self.database().backend
            );
            assert!(
                !log.contains(needle.as_str()),
                "{needle:?} is in the host's log"
            );
            assert!(
                !views.contains(needle.as_str()),
                "{needle:?} is in an admin view"
            );
        }
    }

    fn database(&self) -> &TestDatabase {
        self.database.as_ref().expect("the database")
    }

    /// Stops the host, then drops a PostgreSQL database.
    async fn finish(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.db.pool().close().await;
        if let Some(database) = self.database.take() {
            database.drop_database().await;
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn stripe_pays_captures_part_refunds_twice_voids_and_refuses_refunds_above_the_capture() {
    for database in test_databases().await {
        let Some(store) = Store::start(database).await else {
            return;
        };
        let (order, pi) = store.placed_order().await;
        assert!(pi.starts_with("pi_"), "{pi}");
        let intent = store.stripe_get(&format!("/v1/payment_intents/{pi}")).await;
        assert_eq!(intent["status"], "requires_capture", "{intent}");
        assert_eq!(intent["capture_method"], "manual");
        assert_eq!(
            (intent["amount"].as_i64(), intent["currency"].as_str()),
            (Some(TOTAL), Some("eur"))
        );
        assert_eq!(intent["metadata"]["order_reference"], order.as_str());

        // Capture 3,000 of 5,997: Stripe releases the rest.
        let r = store
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/capture"),
                Some("cap"),
                json!({"amount": 3000}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(amounts(&r.body), (TOTAL, 3000, 0));
        let intent = store.stripe_get(&format!("/v1/payment_intents/{pi}")).await;
        assert_eq!(intent["status"], "succeeded", "{intent}");
        // localstripe books the released 2,997 as a refund on the charge.
        assert_eq!(intent["latest_charge"]["amount_refunded"], TOTAL - 3000);

        // Two partial refunds, each a refund at Stripe; a retry under a key refunds nothing more.
        let refunds = format!("/admin/orders/{order}/refunds");
        let first = store
            .admin(
                Method::POST,
                &refunds,
                Some("r1"),
                json!({"amount": 1000, "reason": "damaged"}),
            )
            .await;
        assert_eq!(first.status, 200, "{}", first.body);
        let r = store
            .admin(Method::POST, &refunds, Some("r2"), json!({"amount": 1500}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let again = store
            .admin(
                Method::POST,
                &refunds,
                Some("r1"),
                json!({"amount": 1000, "reason": "damaged"}),
            )
            .await;
        assert_eq!(again.body, first.body, "replayed");
        let o = store.order(&order).await;
        assert_eq!(amounts(&o), (TOTAL, 3000, 2500));
        let ledger: Vec<(i64, String)> = o["payment"]["refunds"]
            .as_array()
            .expect("refunds")
            .iter()
            .map(|r| {
                (
                    r["amount"].as_i64().expect("amount"),
                    r["reference"].as_str().expect("reference").to_owned(),
                )
            })
            .collect();
        assert_eq!(ledger.len(), 2, "{ledger:?}");
        assert_eq!((ledger[0].0, ledger[1].0), (1000, 1500));
        for (amount, reference) in &ledger {
            let refund = store.stripe_get(&format!("/v1/refunds/{reference}")).await;
            assert_eq!(
                (refund["amount"].as_i64(), refund["payment_intent"].as_str()),
                (Some(*amount), Some(pi.as_str())),
                "{refund}"
            );
        }
        let charged = |intent: &Value| intent["latest_charge"]["amount_refunded"].as_i64();
        let intent = store.stripe_get(&format!("/v1/payment_intents/{pi}")).await;
        assert_eq!(charged(&intent), Some(TOTAL - 3000 + 2500));

        // 2,500 of 3,000 refunded: another 600 is refused by the host, Stripe never asked.
        let r = store
            .admin(Method::POST, &refunds, Some("r3"), json!({"amount": 600}))
            .await;
        assert_eq!(
            code(&r),
            (409, Some("refund_exceeds_captured")),
            "{}",
            r.body
        );
        let intent = store.stripe_get(&format!("/v1/payment_intents/{pi}")).await;
        assert_eq!(charged(&intent), Some(TOTAL - 3000 + 2500));
        assert_eq!(amounts(&store.order(&order).await), (TOTAL, 3000, 2500));

        // Cancelling an authorised order cancels its PaymentIntent.
        let (second, second_pi) = store.placed_order().await;
        let r = store
            .admin(
                Method::POST,
                &format!("/admin/orders/{second}/cancel"),
                Some("c1"),
                Value::Null,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["payment_status"], "voided", "{}", r.body);
        let intent = store
            .stripe_get(&format!("/v1/payment_intents/{second_pi}"))
            .await;
        assert_eq!(intent["status"], "canceled", "{intent}");

        store.assert_nothing_secret_leaked(&pi).await;
        store.finish().await;
    }
}

#[tokio::test]
async fn declined_cards_and_card_numbers_are_refused_release_the_stock_and_are_never_kept() {
    for database in test_databases().await {
        let Some(store) = Store::start(database).await else {
            return;
        };
        let (_, paid) = store.placed_order().await;
        let available = store.available().await;
        assert_eq!(available, STOCK - 3);

        // localstripe's declining card.
        let r = store.checkout("pm_card_chargeCustomerFail").await;
        assert_eq!(code(&r), (402, Some("payment_refused")), "{}", r.body);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("declined")),
            "{}",
            r.body
        );
        assert_eq!(
            store.available().await,
            available,
            "the reservation is released"
        );
        let declined: Vec<_> = store
            .payment_intents()
            .await
            .into_iter()
            .filter(|pi| pi["id"] != paid.as_str())
            .collect();
        assert_eq!(declined.len(), 1, "{declined:?}");
        assert_eq!(declined[0]["status"], "requires_payment_method");

        // A card number where a token belongs: refused by the connector, never sent to Stripe.
        for (i, number) in CARD_NUMBERS.iter().enumerate() {
            let cart = store.cart().await;
            let r = store
                .checkout_cart(&cart, number, &format!("pan-{i}"))
                .await;
            assert_eq!(code(&r), (402, Some("payment_refused")), "{}", r.body);
            assert!(!r.body.to_string().contains(number), "{}", r.body);
        }
        // An unknown payment method: Stripe says so.
        let r = store.checkout("pm_does_not_exist").await;
        assert_eq!(code(&r), (402, Some("payment_refused")), "{}", r.body);
        assert_eq!(
            store.payment_intents().await.len(),
            2,
            "no charge attempt for a card number"
        );
        assert_eq!(store.available().await, available);
        assert_eq!(store.orders().await.len(), 1);

        store.assert_nothing_secret_leaked(&paid).await;
        store.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_killed_after_stripe_authorised_holds_no_money_once_the_sweep_has_run() {
    for database in test_databases().await {
        let Some(mut store) = Store::start_proxied(database).await else {
            return;
        };
        let cart = store.cart().await;
        let proxy = store.proxy.as_ref().expect("a proxy");
        proxy.hold_next_authorisation();
        tokio::select! {
            r = store.checkout_cart(&cart, "pm_card_visa", "crash") => {
                panic!("the checkout answered: {} {}", r.status, r.body);
            }
            () = proxy.authorised_at_the_gateway() => {}
        }
        // The host dies between Stripe's authorisation and recording the order.
        store.kill();

        let intents = store.payment_intents().await;
        assert_eq!(intents.len(), 1, "{intents:?}");
        assert_eq!(intents[0]["status"], "requires_capture", "funds are held");
        let pi = intents[0]["id"].as_str().expect("id").to_owned();
        let attempts: i64 =
            sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM checkout_attempts")
                .fetch_one(store.db.pool())
                .await
                .expect("count");
        assert_eq!(attempts, 1);

        store.restart().await;
        assert!(store.orders().await.is_empty());
        assert_eq!(store.available().await, STOCK - 3, "still reserved");
        // The dead request's key is still held: a retry is told to wait.
        let r = store.checkout_cart(&cart, "pm_card_visa", "crash").await;
        assert_eq!(code(&r), (409, Some("request_in_progress")), "{}", r.body);

        // Not before the attempt is old enough; then the hold is found and released.
        assert_eq!(
            store.recover(unix_seconds() * 1000).await,
            Recovered::default()
        );
        let later = unix_seconds() * 1000 + INTERRUPTED_AFTER_MS + 60_000;
        assert_eq!(
            store.recover(later).await,
            Recovered {
                voided: 1,
                ..Recovered::default()
            }
        );
        let intent = store.stripe_get(&format!("/v1/payment_intents/{pi}")).await;
        assert_eq!(intent["status"], "canceled", "{intent}");
        assert_eq!(store.available().await, STOCK);
        let r = store.checkout_cart(&cart, "pm_card_visa", "crash").await;
        assert_eq!(code(&r), (503, Some("checkout_aborted")), "{}", r.body);
        assert_eq!(store.recover(later).await, Recovered::default());

        // The shopper can still buy, with a new key.
        let r = store.checkout_cart(&cart, "pm_card_visa", "again").await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(store.orders().await.len(), 1);
        assert_eq!(store.available().await, STOCK - 3);
        let paid = r.body["payment"]["gateway_reference"]
            .as_str()
            .expect("reference")
            .to_owned();
        assert_ne!(paid, pi);

        store.assert_nothing_secret_leaked(&paid).await;
        store.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_stripe_made_whose_answer_was_lost_is_recorded_by_the_sweep() {
    for database in test_databases().await {
        let Some(store) = Store::start_proxied(database).await else {
            return;
        };
        // No webhook either: the sweep is all that is left to settle the order.
        store.silence_webhooks().await;
        let (order, pi) = store.placed_order().await;
        let proxy = store.proxy.as_ref().expect("a proxy");
        proxy.lose_next("/capture", Lost::BadGateway);
        let r = store
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/capture"),
                Some("cap"),
                json!({}),
            )
            .await;
        assert_eq!(
            code(&r),
            (503, Some("payment_gateway_unavailable")),
            "{}",
            r.body
        );
        let intent = store.stripe_get(&format!("/v1/payment_intents/{pi}")).await;
        assert_eq!(intent["status"], "succeeded", "Stripe captured: {intent}");
        assert_eq!(store.order(&order).await["payment_status"], "capturing");

        let later = unix_seconds() * 1000 + INTERRUPTED_AFTER_MS + 60_000;
        assert_eq!(
            store.recover(later).await,
            Recovered {
                captured: 1,
                ..Recovered::default()
            }
        );
        let o = store.order(&order).await;
        assert_eq!(o["payment_status"], "captured", "{o}");
        assert_eq!(amounts(&o), (TOTAL, TOTAL, 0));

        store.assert_nothing_secret_leaked(&pi).await;
        store.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_checkouts_with_one_key_make_one_payment_intent_and_one_order() {
    for database in test_databases().await {
        let Some(store) = Store::start(database).await else {
            return;
        };
        let store = Arc::new(store);
        let cart = Arc::new(store.cart().await);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (store, cart) = (store.clone(), cart.clone());
                tokio::spawn(
                    async move { store.checkout_cart(&cart, "pm_card_visa", "burst").await },
                )
            })
            .collect();
        let mut placed = Vec::new();
        for task in tasks {
            let r = task.await.expect("task");
            match r.status {
                201 => placed.push(r.body["id"].as_str().expect("id").to_owned()),
                // The first request still running: the client may retry.
                409 => {}
                _ => panic!("unexpected answer {}: {}", r.status, r.body),
            }
        }
        assert!(!placed.is_empty(), "no checkout succeeded");
        // Every retry after the burst gets the same order.
        let r = store.checkout_cart(&cart, "pm_card_visa", "burst").await;
        assert_eq!(r.status, 201, "{}", r.body);
        placed.push(r.body["id"].as_str().expect("id").to_owned());
        placed.dedup();
        assert_eq!(placed.len(), 1, "{placed:?}");

        let intents = store.payment_intents().await;
        assert_eq!(intents.len(), 1, "one charge at Stripe: {intents:?}");
        assert_eq!(
            intents[0]["metadata"]["order_reference"],
            placed[0].as_str()
        );
        assert_eq!(store.orders().await.len(), 1);
        assert_eq!(store.available().await, STOCK - 3);

        let store = Arc::into_inner(store).expect("sole owner");
        store.assert_nothing_secret_leaked(&placed[0]).await;
        store.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_webhooks_from_localstripe_are_stored_once_and_forged_ones_refused() {
    for database in test_databases().await {
        let Some(store) = Store::start(database).await else {
            return;
        };
        let store = Arc::new(store);
        let (order, pi) = store.placed_order().await;
        let r = store
            .admin(
                Method::POST,
                &format!("/admin/orders/{order}/capture"),
                Some("cap"),
                json!({"amount": 3000}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);

        // localstripe signs payment_intent.succeeded and delivers it about a second later.
        let deadline = Instant::now() + Duration::from_secs(20);
        let delivered = loop {
            let events = store.payment_events().await;
            if let Some(event) = events.iter().find(|(_, kind, _)| kind == "captured") {
                break event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no delivery from localstripe: {events:?}\n{}",
                store.stripe.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(delivered.0.starts_with("evt_"), "{delivered:?}");
        assert_eq!(delivered.2, "already_applied", "our capture came first");
        assert_eq!(amounts(&store.order(&order).await), (TOTAL, 3000, 0));

        // A refund event (Stripe's shape, signed with the secret) delivered ten times at once.
        let now = unix_seconds();
        let refund = json!({
            "id": "evt_refund_e2e", "object": "event", "api_version": "2025-03-31.basil",
            "type": "charge.refunded", "created": now,
            "data": {"object": {"id": "ch_e2e", "object": "charge", "amount": TOTAL,
                                "amount_captured": 3000, "amount_refunded": 1200,
                                "currency": "eur", "payment_intent": pi}}
        })
        .to_string();
        let signature = stripe_signature(&store.webhook_secret, now, &refund);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (store, body, signature) = (store.clone(), refund.clone(), signature.clone());
                tokio::spawn(async move { store.deliver(&body, &signature).await })
            })
            .collect();
        let mut first = Vec::new();
        for task in tasks {
            let r = task.await.expect("task");
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["event_id"], "evt_refund_e2e");
            if r.body["duplicate"] == false {
                first.push(r.body["outcome"].clone());
            }
        }
        assert_eq!(first, [json!("applied")], "applied exactly once");
        assert_eq!(amounts(&store.order(&order).await), (TOTAL, 3000, 1200));
        let stored = store.payment_events().await.len();
        assert_eq!(stored, 2);

        // Forged, tampered, stale, from the future, unsigned: 400 and nothing stored. The
        // clock is read again here, and the stale and future stamps are well past the 300 s
        // tolerance, so a slow run cannot carry them back inside it.
        let now = unix_seconds();
        let tampered = refund.replace("1200", "3000");
        for (what, body, header) in [
            (
                "forged",
                refund.as_str(),
                stripe_signature("whsec_guess", now, &refund),
            ),
            ("tampered", tampered.as_str(), signature.clone()),
            (
                "stale",
                refund.as_str(),
                stripe_signature(&store.webhook_secret, now - 420, &refund),
            ),
            (
                "from the future",
                refund.as_str(),
                stripe_signature(&store.webhook_secret, now + 420, &refund),
            ),
            ("unsigned", refund.as_str(), String::new()),
        ] {
            let r = store.deliver(body, &header).await;
            assert_eq!(
                code(&r),
                (400, Some("invalid_signature")),
                "{what}: {}",
                r.body
            );
        }
        let garbage = "{\"id\": \"evt_x\"";
        let r = store
            .deliver(
                garbage,
                &stripe_signature(&store.webhook_secret, now, garbage),
            )
            .await;
        assert_eq!(code(&r), (400, Some("malformed_webhook")), "{}", r.body);
        assert_eq!(store.payment_events().await.len(), stored);
        assert_eq!(amounts(&store.order(&order).await), (TOTAL, 3000, 1200));

        // A chargeback (Stripe's `charge.dispute.created`, signed): kept with the order.
        let dispute = json!({
            "id": "evt_dispute_e2e", "object": "event", "type": "charge.dispute.created",
            "created": now,
            "data": {"object": {"id": "dp_e2e", "object": "dispute", "amount": 1800,
                                "currency": "eur", "charge": "ch_e2e", "payment_intent": pi,
                                "reason": "product_not_received", "status": "needs_response"}}
        })
        .to_string();
        let r = store
            .deliver(
                &dispute,
                &stripe_signature(&store.webhook_secret, now, &dispute),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["outcome"], "applied", "{}", r.body);
        let disputed = &store.order(&order).await["payment"]["disputes"];
        assert_eq!(
            (
                disputed[0]["id"].clone(),
                disputed[0]["status"].clone(),
                disputed[0]["amount"].clone()
            ),
            (json!("dp_e2e"), json!("open"), json!(1800)),
            "{disputed}"
        );
        assert!(
            store
                .payment_events()
                .await
                .iter()
                .any(|(id, kind, _)| id == "evt_dispute_e2e" && kind == "dispute")
        );

        let store = Arc::into_inner(store).expect("sole owner");
        store.assert_nothing_secret_leaked(&pi).await;
        store.finish().await;
    }
}
