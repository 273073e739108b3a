//! The `cartridge` binary, run as a plugin author runs it.

use std::path::Path;
use std::process::{Command, Output};

use cartridge_tests::plugins;

fn cartridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cartridge"))
        .args(args)
        .env("CARTRIDGE_LOG", "warn")
        .output()
        .expect("run cartridge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_plugin(name: &str, fixture: &Path, extra: &[&str]) -> Output {
    let p = plugins();
    let wasm = p.wasm(name);
    let manifest = p.crate_dir(name).join("plugin.toml");
    let mut args = vec![
        "plugin",
        "run",
        wasm.to_str().expect("utf-8 path"),
        "--manifest",
        manifest.to_str().expect("utf-8 path"),
        "--input",
        fixture.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    cartridge(&args)
}

#[test]
fn plugin_run_prints_the_output_and_what_it_used_against_the_limits() {
    let fixture = plugins().fixture("tiered-discount", "cart.json");
    let out = run_plugin("tiered-discount", &fixture, &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for expected in [
        "tiered-discount@1.0.0",
        "\"label\": \"10 % off 10 or more\"",
        "priced cart",
        "instructions ",
        "/ 11000000",
        "memory ",
        "/ 16777216 bytes",
        "time ",
        "/ 20 ms deadline",
        "output size",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in\n{stdout}"
        );
    }
}

#[test]
fn plugin_run_json_is_machine_readable() {
    let fixture = plugins().fixture("tiered-discount", "cart.json");
    let out = run_plugin("tiered-discount", &fixture, &["--json"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], true);
    assert!(
        doc["stats"]["fuel_consumed"]
            .as_u64()
            .is_some_and(|f| f > 0)
    );
    assert!(
        doc["stats"]["peak_memory_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0)
    );
    assert_eq!(doc["limits"]["deadline_ms"], 20);
    assert_eq!(doc["priced"]["line_discounts"], 2398);
}

#[test]
fn plugin_run_exits_non_zero_with_the_named_error() {
    let fixture = plugins().fixture("tiered-discount", "cart.json");
    let out = run_plugin("loop-forever", &fixture, &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["code"], "deadline_exceeded");

    let out = run_plugin(
        "loop-forever",
        &fixture,
        &["--fuel", "100000", "--deadline-ms", "5000"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("error[fuel_exhausted]"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plugin_run_refuses_input_of_the_wrong_shape_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("bad.json");
    std::fs::write(&input, r#"{"id": "c", "lines": "not a list"}"#).expect("write");
    let out = run_plugin("tiered-discount", &input, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a valid pricing input"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_scaffolded_plugin_builds_and_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = dir.path().join("welcome-offer");
    let out = cartridge(&[
        "plugin",
        "new",
        "welcome-offer",
        "--hook",
        "pricing",
        "--dir",
        crate_dir.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(crate_dir.join("plugin.toml").is_file());

    // Share the plugins workspace's build output so the SDK is not compiled again.
    let out = Command::new(env!("CARGO_BIN_EXE_cartridge"))
        .args(["plugin", "build", crate_dir.to_str().expect("utf-8")])
        .env("CARGO_TARGET_DIR", cartridge_tests::plugins_target_dir())
        .env_remove("RUSTFLAGS")
        .output()
        .expect("build");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bundle = text(&out.stdout).trim().to_owned();
    let wasm = Path::new(&bundle).join("welcome-offer.wasm");
    let size = std::fs::metadata(&wasm)
        .expect("bundle has the component")
        .len();
    assert!(size <= 100 * 1024, "a minimal plugin is {size} bytes");

    let input = dir.path().join("cart.json");
    std::fs::write(
        &input,
        r#"{"id":"c","currency":"EUR","lines":[{"id":"l","product_id":"p","sku":"S","variant_attributes":[],"categories":[],"quantity":1,"unit_price":{"amount":5000,"currency":"EUR"}}],"customer":null,"coupon_codes":["WELCOME10"],"shipping":null,"now":0}"#,
    )
    .expect("write");
    let out = cartridge(&[
        "plugin",
        "run",
        wasm.to_str().expect("utf-8"),
        "--input",
        input.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["priced"]["order_discount"], 500);

    let out = cartridge(&[
        "plugin",
        "new",
        "Bad Name",
        "--hook",
        "pricing",
        "--dir",
        dir.path().join("x").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("name"));
}

/// `plugin run --replay`: a candidate from disk against the registry's active version on the
/// calls the registry logged. Exits 1 when any answer differs, 0 when none does.
#[tokio::test]
async fn plugin_run_replay_compares_a_candidate_with_the_active_version_on_logged_calls() {
    use cartridge_host::registry::{Registry, RegistryConfig};
    use std::sync::Arc;

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("cartridge.db").display());
    let db = cartridge_host::db::Db::connect(&url).await.expect("db");
    db.migrate().await.expect("migrate");
    let runtime = cartridge_host::plugin::Runtime::new(Default::default()).expect("runtime");
    let config = RegistryConfig {
        watch: cartridge_host::plugin::WatchPolicy {
            sample_every: 1,
            trip_after: 0,
        },
        ..RegistryConfig::default()
    };
    let registry = Registry::open(db.clone(), Arc::new(runtime), config)
        .await
        .expect("registry");
    let tasks = registry.spawn();
    let p = plugins();
    registry
        .upload(
            "test",
            "api",
            &p.manifest_text("tiered-discount"),
            p.wasm_bytes("tiered-discount"),
        )
        .await
        .expect("upload");
    registry
        .activate("test", "tiered-discount", "1.0.0")
        .await
        .expect("activate");
    // Real traffic: the fixture cart (12 and 1 units).
    let cart = serde_json::from_str(
        &std::fs::read_to_string(p.fixture("tiered-discount", "cart.json")).expect("fixture"),
    )
    .expect("cart");
    let active = registry
        .snapshot()
        .hook(cartridge_host::plugin::HookKind::Pricing);
    for _ in 0..3 {
        cartridge_host::hooks::price(&active, &cart)
            .await
            .expect("price");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let logged = registry.call_log("tiered-discount", 10).await.expect("log");
        if logged.calls.len() == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "calls not logged");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for task in tasks {
        task.abort();
    }

    let wasm = p.wasm("tiered-discount");
    let candidate = dir.path().join("candidate.toml");
    let replay = |manifest: &Path| {
        cartridge(&[
            "plugin",
            "run",
            wasm.to_str().expect("utf-8"),
            "--manifest",
            manifest.to_str().expect("utf-8"),
            "--replay",
            "50",
            "--database-url",
            &url,
        ])
    };
    // The same rule: no difference.
    let out = replay(&p.crate_dir("tiered-discount").join("plugin.toml"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("3 inputs: 3 identical, 0 different"),
        "{stdout}"
    );
    // 20 % from 10 units: the 12-unit line prices differently on every logged cart.
    std::fs::write(
        &candidate,
        p.manifest_text("tiered-discount")
            .replace("version = \"1.0.0\"", "version = \"1.1.0\"")
            .replace("10:1000", "10:2000"),
    )
    .expect("write");
    let out = replay(&candidate);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("3 inputs: 0 identical, 3 different"),
        "{stdout}"
    );
    assert!(stdout.contains("20 % off 10 or more"), "{stdout}");
}
