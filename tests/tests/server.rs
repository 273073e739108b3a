//! The HTTP application on a real socket (port 0), with real plugins installed.

use std::net::SocketAddr;

use cartridge_host::plugin::{Runtime, RuntimeConfig};
use cartridge_host::server::{AppState, Application, load_plugins};
use cartridge_tests::plugins;
use serde_json::{Value, json};

struct TestApp {
    base: String,
    client: reqwest::Client,
    _plugins: tempfile::TempDir,
}

async fn spawn_app() -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["tiered-discount", "loop-forever"] {
        plugins().bundle_into(name, dir.path());
    }
    // A broken bundle must not stop the others from loading.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(broken.join("plugin.toml"), "name = \"broken\"").expect("write");

    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let installed = load_plugins(&runtime, dir.path()).expect("load");
    let app = Application::build(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        AppState::new(installed),
    )
    .await
    .expect("bind");
    let addr = app.local_addr().expect("addr");
    tokio::spawn(app.run());
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        _plugins: dir,
    }
}

impl TestApp {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn fixture_cart() -> Value {
    let text = std::fs::read_to_string(plugins().fixture("tiered-discount", "cart.json"))
        .expect("fixture");
    serde_json::from_str(&text).expect("json")
}

#[tokio::test]
async fn health_and_the_installed_plugins_are_served() {
    let app = spawn_app().await;
    assert_eq!(app.get("/health").await, (200, json!({"status": "ok"})));
    let (status, body) = app.get("/plugins").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["plugins"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, vec!["loop-forever", "tiered-discount"]);
}

#[tokio::test]
async fn invoking_a_plugin_returns_its_priced_decision() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_raw(
            "/plugins/tiered-discount/invoke",
            fixture_cart().to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["output"]["priced"]["line_discounts"], 2398);
    assert!(body["output"]["stats"].is_null());
    assert!(body["stats"]["fuel_consumed"].as_u64().is_some());
}

#[tokio::test]
async fn a_failing_plugin_is_a_bad_gateway_with_its_named_error() {
    let app = spawn_app().await;
    let (status, body) = app
        .post_raw("/plugins/loop-forever/invoke", fixture_cart().to_string())
        .await;
    assert_eq!(status, 502);
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    // The server is fine afterwards.
    let (status, _) = app
        .post_raw(
            "/plugins/tiered-discount/invoke",
            fixture_cart().to_string(),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_requests_get_clear_client_errors() {
    let app = spawn_app().await;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/plugins/tiered-discount/invoke",
            "{not json".into(),
            400,
            "malformed_json",
        ),
        (
            "/plugins/tiered-discount/invoke",
            json!({"id": "c", "lines": "nope"}).to_string(),
            422,
            "invalid_input",
        ),
        (
            "/plugins/tiered-discount/invoke",
            {
                let mut cart = fixture_cart();
                cart["lines"][0]["quantity"] = json!(-3);
                cart.to_string()
            },
            422,
            "invalid_input",
        ),
        (
            "/plugins/nope/invoke",
            fixture_cart().to_string(),
            404,
            "unknown_plugin",
        ),
        (
            "/plugins/tiered-discount/invoke",
            format!("{{\"pad\": \"{}\"}}", "x".repeat(1024 * 1024)),
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = app.post_raw(path, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{answer}"
        );
    }
}
