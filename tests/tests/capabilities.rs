//! The capabilities a plugin can be granted — outbound HTTP to named hosts and secrets — and
//! the walls around them: a host that is not granted, a redirect, a huge or slow response, a
//! secret that is not granted, a secret in a log line, an error or a panic message, a component
//! importing what its manifest does not ask for; and the registry's grants and secret
//! references.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cartridge_host::plugin::bindings::pricing::Cart;
use cartridge_host::plugin::{
    Capability, HookErrorKind, Manifest, Plugin, Runtime, RuntimeConfig, SecretRef,
};
use cartridge_tests::plugins;

/// A local web server: `/hello`, `/redirect` (to /hello), `/huge` (2 MiB), `/slow` (5 s). It
/// counts the requests that carried the probe's header.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = probes.clone();
    let app = Router::new()
        .route(
            "/hello",
            get(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    if headers.contains_key("x-probe") {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    "hello from the gateway"
                }
            }),
        )
        .route(
            "/redirect",
            get(|| async { axum::response::Redirect::temporary("/hello") }),
        )
        .route("/huge", get(|| async { vec![b'x'; 2 * 1024 * 1024] }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, probes)
}

fn cart() -> Cart {
    serde_json::from_str(
        &std::fs::read_to_string(plugins().fixture("tiered-discount", "cart.json"))
            .expect("fixture"),
    )
    .expect("cart")
}

/// The http-probe plugin asking for `capabilities`, configured with `config`.
fn probe(runtime: &Runtime, capabilities: &str, config: &[(&str, &str)]) -> Plugin {
    let manifest = plugins().manifest_text("http-probe").replace(
        "capabilities = [\"http:127.0.0.1\", \"secrets\"]",
        &format!("capabilities = [{capabilities}]"),
    );
    let manifest = Manifest::parse(&manifest).expect("manifest");
    let config: BTreeMap<String, String> = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    runtime
        .load(manifest, &plugins().wasm_bytes("http-probe"))
        .expect("load")
        .with_config(&config)
}

/// What the probe reported (its `plugin-error` message), or the call's named error.
async fn run(plugin: &Plugin) -> Result<String, HookErrorKind> {
    match plugin.price(&cart()).await {
        Ok(call) => Ok(format!("no report: {:?}", call.output)),
        Err(e) => match e.kind {
            HookErrorKind::PluginError { code, message } if code == "probe" => Ok(message),
            other => Err(other),
        },
    }
}

/// What the probe's own manifest asks for.
const ASKS: &str = "\"http:127.0.0.1\", \"secrets\"";

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 8,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

#[tokio::test]
async fn a_granted_host_answers_and_everything_else_is_denied() {
    let (addr, probes) = server().await;
    let runtime = runtime();
    let granted = format!("\"http:127.0.0.1:{}\", \"secrets\"", addr.port());
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", addr.port());

    let ok = probe(&runtime, &granted, &[("url", &url("/hello"))]);
    assert_eq!(
        run(&ok).await.expect("report"),
        "status=200 body=hello from the gateway"
    );
    assert_eq!(probes.load(Ordering::SeqCst), 1, "the header went through");

    // A redirect is handed back, not followed.
    let redirect = probe(&runtime, &granted, &[("url", &url("/redirect"))]);
    assert!(
        run(&redirect)
            .await
            .expect("report")
            .starts_with("status=307"),
        "redirects are not followed"
    );
    // Past the body cap; past the deadline (2 s in the manifest).
    let huge = probe(&runtime, &granted, &[("url", &url("/huge"))]);
    let report = run(&huge).await.expect("report");
    assert!(report.starts_with("error=HttpError::TooLarge"), "{report}");
    let slow = probe(&runtime, &granted, &[("url", &url("/slow"))]);
    let started = std::time::Instant::now();
    assert_eq!(
        run(&slow).await.expect("report"),
        "error=HttpError::Timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    // Other ports, other names for the same machine, other schemes: stopped.
    for denied in [
        "http://127.0.0.1:5432/".to_owned(),
        format!("http://localhost:{}/hello", addr.port()),
        "http://127.0.0.1/hello".to_owned(),
    ] {
        let plugin = probe(&runtime, &granted, &[("url", &denied)]);
        match run(&plugin).await {
            Err(HookErrorKind::CapabilityDenied { capability }) => {
                assert!(capability.starts_with("http to "), "{capability}");
            }
            other => panic!("{denied}: {other:?}"),
        }
    }
    // A granted name that resolves to an internal address is not a way in.
    let by_name = format!("\"http:localhost:{}\", \"secrets\"", addr.port());
    let plugin = probe(
        &runtime,
        &by_name,
        &[("url", &format!("http://localhost:{}/hello", addr.port()))],
    );
    let report = run(&plugin).await.expect("report");
    assert!(
        report.starts_with("error=HttpError::Connection") && report.contains("no public address"),
        "{report}"
    );
    let plugin = probe(&runtime, &granted, &[("url", "file:///etc/passwd")]);
    assert!(
        run(&plugin)
            .await
            .expect("report")
            .starts_with("error=HttpError::InvalidRequest")
    );
    assert_eq!(
        probes.load(Ordering::SeqCst),
        1,
        "no denied request reached anything"
    );
}

#[tokio::test]
async fn secrets_are_read_only_when_granted_and_never_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("api-key");
    std::fs::write(&path, "sk_test_very_secret\n").expect("write");
    let runtime = runtime();
    let secrets: BTreeMap<String, SecretRef> = [(
        "api-key".to_owned(),
        SecretRef::File(path.display().to_string()),
    )]
    .into();

    let plugin = probe(&runtime, ASKS, &[("secret", "api-key")])
        .with_grants(&[Capability::Secrets], secrets.clone());
    let call = plugin.price(&cart()).await.expect_err("probe reports");
    assert_eq!(
        call.kind,
        HookErrorKind::PluginError {
            code: "probe".to_owned(),
            message: "secret-length=19".to_owned()
        }
    );
    // The plugin logs the value; the host keeps only a blank.
    let logging = probe(&runtime, ASKS, &[("secret", "api-key"), ("answer", "log")])
        .with_grants(&[Capability::Secrets], secrets.clone());
    let call = logging.price(&cart()).await.expect("answers");
    let lines: Vec<&str> = call.stats.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(lines, ["the secret is [secret]", "secret-length=19"]);

    // Nor does an error or a panic message carry it out.
    let leaking = probe(&runtime, ASKS, &[("secret", "api-key"), ("leak", "error")])
        .with_grants(&[Capability::Secrets], secrets.clone());
    assert_eq!(
        run(&leaking).await.expect("report"),
        "the secret is [secret]"
    );
    let panicking = probe(&runtime, ASKS, &[("secret", "api-key"), ("leak", "panic")])
        .with_grants(&[Capability::Secrets], secrets.clone());
    match run(&panicking).await {
        Err(HookErrorKind::Trap { message }) => {
            assert!(message.contains("the secret is [secret]"), "{message}");
            assert!(!message.contains("sk_test_very_secret"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }

    // Unset: none. Asked for but not granted by the operator: stopped.
    let unset = probe(&runtime, ASKS, &[("secret", "other")])
        .with_grants(&[Capability::Secrets], secrets.clone());
    assert_eq!(run(&unset).await.expect("report"), "secret=none");
    let ungranted = probe(&runtime, ASKS, &[("secret", "api-key")]).with_grants(&[], secrets);
    assert!(matches!(
        run(&ungranted).await,
        Err(HookErrorKind::CapabilityDenied { .. })
    ));
}

#[tokio::test]
async fn a_component_cannot_import_what_its_manifest_does_not_ask_for() {
    let runtime = runtime();
    let manifest = plugins()
        .manifest_text("http-probe")
        .replace("capabilities = [\"http:127.0.0.1\", \"secrets\"]", "");
    let err = runtime
        .load(
            Manifest::parse(&manifest).expect("manifest"),
            &plugins().wasm_bytes("http-probe"),
        )
        .expect_err("refused");
    assert_eq!(err.code(), "capability_denied", "{err}");
    assert!(err.to_string().contains("cartridge:capabilities/"), "{err}");
    // A plugin that uses no capability imports none, whatever the SDK offers.
    let plain = Manifest::parse(&plugins().manifest_text("tiered-discount")).expect("manifest");
    runtime
        .load(plain, &plugins().wasm_bytes("tiered-discount"))
        .expect("loads without asking for anything");
}
