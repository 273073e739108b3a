//! The plugin runtime end to end: real components built from `plugins/`, loaded and called
//! through the host's runtime exactly as the server does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartridge_host::hooks;
use cartridge_host::plugin::bindings::pricing::{Action, Cart, CartLine, DiscountValue};
use cartridge_host::plugin::bindings::types::Money;
use cartridge_host::plugin::{
    Capability, FailurePolicy, HookErrorKind, HookKind, Manifest, Plugin, Runtime, RuntimeConfig,
    SecretRef,
};
use cartridge_tests::plugins;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 64,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

fn manifest(name: &str) -> Manifest {
    Manifest::parse(&plugins().manifest_text(name)).expect("example manifests are valid")
}

fn load(runtime: &Runtime, name: &str) -> Plugin {
    load_as(runtime, name, manifest(name))
}

fn load_as(runtime: &Runtime, name: &str, manifest: Manifest) -> Plugin {
    runtime
        .load(manifest, &plugins().wasm_bytes(name))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn configured(runtime: &Runtime, name: &str, pairs: &[(&str, &str)]) -> Plugin {
    let overrides: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    load(runtime, name).with_config(&overrides)
}

fn eur(amount: u64) -> Money {
    Money {
        amount,
        currency: "EUR".into(),
    }
}

/// A cart with one line per quantity, each unit at 10.00 EUR.
fn cart(quantities: &[u32]) -> Cart {
    Cart {
        id: "cart-1".into(),
        currency: "EUR".into(),
        lines: quantities
            .iter()
            .enumerate()
            .map(|(i, &quantity)| CartLine {
                id: format!("line-{i}"),
                product_id: format!("product-{i}"),
                sku: format!("SKU-{i}"),
                variant_attributes: vec![],
                categories: vec!["apparel".into()],
                quantity,
                unit_price: eur(1000),
            })
            .collect(),
        customer: None,
        coupon_codes: vec![],
        shipping: Some(eur(495)),
        now: 1_764_000_000_000,
    }
}

async fn error_of(plugin: &Plugin, cart: &Cart) -> HookErrorKind {
    match plugin.price(cart).await {
        Ok(call) => panic!(
            "{} should have failed, returned {:?}",
            plugin.manifest().id(),
            call.output
        ),
        Err(e) => {
            assert_eq!(
                e.plugin.name,
                plugin.manifest().name,
                "error names the plugin"
            );
            assert_eq!(
                e.plugin.version,
                plugin.manifest().version,
                "and its version"
            );
            assert_eq!(e.plugin.hook, HookKind::Pricing, "and the hook");
            e.kind
        }
    }
}

/// After any failure, a good plugin on the same runtime still works.
async fn still_serving(runtime: &Runtime) {
    let good = load(runtime, "tiered-discount");
    let call = good
        .price(&cart(&[3]))
        .await
        .expect("a good plugin still works");
    assert_eq!(call.output.operations.len(), 1);
}

#[tokio::test]
async fn a_pricing_plugin_prices_a_cart_inside_the_sandbox_and_reports_its_costs() {
    let runtime = runtime();
    let plugin = load(&runtime, "tiered-discount");
    let call = plugin.price(&cart(&[1, 3, 12, 30])).await.expect("priced");
    let discounts: Vec<(String, u32)> = call
        .output
        .operations
        .iter()
        .map(|op| match &op.action {
            Action::LineDiscount(d) => match d.value {
                DiscountValue::BasisPoints(bp) => (d.line_id.clone(), bp),
                ref other => panic!("unexpected value {other:?}"),
            },
            other => panic!("unexpected action {other:?}"),
        })
        .collect();
    assert_eq!(
        discounts,
        vec![
            ("line-1".to_owned(), 500),
            ("line-2".to_owned(), 1000),
            ("line-3".to_owned(), 1500)
        ]
    );
    let stats = &call.stats;
    let fuel = stats.fuel_consumed.expect("fuel is counted by default");
    assert!(fuel > 1_000 && fuel < 11_000_000, "fuel used: {fuel}");
    assert!(stats.peak_memory_bytes > 0);
    assert!(stats.peak_memory_bytes <= plugin.manifest().limits.memory_bytes());
    assert!(stats.output_bytes > 0);
}

#[tokio::test]
async fn operator_configuration_overrides_the_manifest_defaults() {
    let runtime = runtime();
    let plugin = configured(&runtime, "tiered-discount", &[("tiers", "2:2500")]);
    let call = plugin.price(&cart(&[2])).await.expect("priced");
    assert_eq!(call.output.operations[0].label, "25 % off 2 or more");

    let broken = configured(&runtime, "tiered-discount", &[("tiers", "lots")]);
    match error_of(&broken, &cart(&[2])).await {
        HookErrorKind::PluginError { code, .. } => assert_eq!(code, "invalid-config"),
        other => panic!("expected the plugin's own error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_its_deadline() {
    let runtime = runtime();
    let plugin = load(&runtime, "loop-forever");
    let deadline = plugin.manifest().limits.deadline();
    let started = Instant::now();
    let kind = error_of(&plugin, &cart(&[1])).await;
    let took = started.elapsed();
    assert_eq!(kind, HookErrorKind::DeadlineExceeded { deadline });
    assert!(
        took >= deadline,
        "stopped after {took:?}, before its deadline"
    );
    // Generous: this machine is shared. What matters is that it stops at all, promptly.
    assert!(
        took < deadline + Duration::from_millis(500),
        "stopped only after {took:?}"
    );
    still_serving(&runtime).await;
}

#[tokio::test]
async fn an_instruction_budget_stops_a_loop_deterministically() {
    let runtime = runtime();
    let mut m = manifest("loop-forever");
    m.limits.fuel = Some(2_000_000);
    m.limits.deadline_ms = 10_000;
    let plugin = load_as(&runtime, "loop-forever", m);
    assert_eq!(
        error_of(&plugin, &cart(&[1])).await,
        HookErrorKind::FuelExhausted { budget: 2_000_000 }
    );
    still_serving(&runtime).await;
}

#[tokio::test]
async fn a_gigabyte_allocation_is_stopped_at_the_memory_cap() {
    let runtime = runtime();
    let plugin = load(&runtime, "memory-hog");
    let limit = plugin.manifest().limits.memory_bytes();
    match error_of(&plugin, &cart(&[1])).await {
        HookErrorKind::MemoryLimitExceeded {
            limit: reported,
            requested,
        } => {
            assert_eq!(reported, limit);
            assert!(requested >= 1 << 30, "asked for {requested}");
        }
        other => panic!("expected memory_limit_exceeded, got {other:?}"),
    }
    still_serving(&runtime).await;
}

#[tokio::test]
async fn endless_recursion_traps() {
    let runtime = runtime();
    let plugin = load(&runtime, "deep-recursion");
    let kind = error_of(&plugin, &cart(&[1])).await;
    assert_eq!(kind.code(), "trap", "{kind:?}");
    still_serving(&runtime).await;
}

#[tokio::test]
async fn a_panic_is_reported_with_the_plugins_own_message() {
    let runtime = runtime();
    let plugin = load(&runtime, "panicker");
    match error_of(&plugin, &cart(&[1])).await {
        HookErrorKind::Trap { message } => {
            assert!(
                message.contains("panicker gave up on cart cart-1"),
                "message: {message}"
            );
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    still_serving(&runtime).await;
}

#[tokio::test]
async fn an_oversized_output_is_refused() {
    let runtime = runtime();
    let plugin = load(&runtime, "huge-output");
    match error_of(&plugin, &cart(&[1])).await {
        HookErrorKind::OutputTooLarge { size, limit } => assert!(size > limit),
        other => panic!("expected output_too_large, got {other:?}"),
    }
    still_serving(&runtime).await;
}

#[tokio::test]
async fn inadmissible_operations_are_refused_as_invalid_output() {
    let runtime = runtime();
    for (mode, expected) in [
        ("above-price", "more than the unit price"),
        ("unknown-line", "no cart line has id"),
        ("wrong-currency", "\"XXX\""),
        ("unentered-code", "did not enter"),
    ] {
        let plugin = configured(&runtime, "invalid-output", &[("mode", mode)]);
        match error_of(&plugin, &cart(&[1])).await {
            HookErrorKind::InvalidOutput { reason } => {
                assert!(reason.contains(expected), "{mode}: {reason}");
            }
            other => panic!("{mode}: expected invalid_output, got {other:?}"),
        }
    }
    still_serving(&runtime).await;
}

#[tokio::test]
async fn reaching_for_files_environment_or_network_is_denied() {
    let runtime = runtime();
    for (mode, capability) in [
        ("file", "filesystem"),
        ("env", "environment"),
        ("socket", "network"),
        ("dns", "network"),
    ] {
        let plugin = configured(&runtime, "sandbox-escape", &[("mode", mode)]);
        match error_of(&plugin, &cart(&[1])).await {
            HookErrorKind::CapabilityDenied { capability: what } => {
                assert!(what.starts_with(capability), "{mode}: {what}");
            }
            other => panic!("{mode}: expected capability_denied, got {other:?}"),
        }
    }
    still_serving(&runtime).await;
}

#[tokio::test]
async fn logging_is_capped_per_call() {
    let runtime = runtime();
    let plugin = load(&runtime, "chatty");
    let call = plugin
        .price(&cart(&[1]))
        .await
        .expect("chatty still answers");
    let logged: usize = call.stats.logs.iter().map(|l| l.message.len()).sum();
    assert!(
        logged <= cartridge_host::plugin::LOG_CAP_BYTES,
        "{logged} bytes kept"
    );
    assert!(logged > 0);
    assert_eq!(
        call.stats.logs.len() + call.stats.logs_dropped as usize,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_plugin_does_not_hold_up_other_calls() {
    let runtime = Arc::new(runtime());
    let mut slow = manifest("loop-forever");
    slow.limits.deadline_ms = 1_500;
    let looping = Arc::new(load_as(&runtime, "loop-forever", slow));
    let good = Arc::new(load(&runtime, "tiered-discount"));

    // Occupy both workers' worth of runaway plugins, then call the good one meanwhile.
    let runaways: Vec<_> = (0..4)
        .map(|_| {
            let looping = looping.clone();
            tokio::spawn(async move { looping.price(&cart(&[1])).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    for _ in 0..50 {
        good.price(&cart(&[3, 10]))
            .await
            .expect("good plugin answers");
    }
    let took = started.elapsed();
    for r in runaways {
        let outcome = r.await.expect("task");
        assert_eq!(
            outcome.expect_err("runaway stopped").code(),
            "deadline_exceeded"
        );
    }
    // The good calls interleave with the runaways (which yield at every epoch tick) instead
    // of waiting for them to be stopped.
    assert!(
        took < Duration::from_millis(1_400),
        "50 good calls took {took:?} while runaways ran"
    );
}

/// One instance slot, held by a runaway plugin until its deadline stops it; `good` is a quick
/// pricing plugin with a deadline of `good_deadline_ms`, started while the slot is held.
async fn while_the_only_slot_is_held_for(
    held_ms: u32,
    good_deadline_ms: u32,
) -> (Result<Duration, HookErrorKind>, Plugin) {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 1,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let mut slow = manifest("loop-forever");
    slow.limits.deadline_ms = held_ms;
    let looping = Arc::new(load_as(&runtime, "loop-forever", slow));
    let mut quick = manifest("tiered-discount");
    quick.limits.deadline_ms = good_deadline_ms;
    let good = load_as(&runtime, "tiered-discount", quick);
    let busy = {
        let looping = looping.clone();
        tokio::spawn(async move { looping.price(&cart(&[1])).await })
    };
    // The runaway holds the slot (it takes it before it instantiates) from here on.
    while runtime.free_instance_slots() > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let outcome = good
        .price(&cart(&[3]))
        .await
        .map(|_| started.elapsed())
        .map_err(|e| e.kind);
    let stopped = busy
        .await
        .expect("task")
        .expect_err("the runaway is stopped");
    assert_eq!(stopped.code(), "deadline_exceeded");
    (outcome, good)
}

/// `cartridge_plugin_slot_waits_total` as `/metrics` shows it (one registry per process).
fn slot_waits() -> u64 {
    cartridge_host::plugin::metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix("cartridge_plugin_slot_waits_total "))
        .and_then(|n| n.parse().ok())
        .expect("the slot waits series")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_its_turn_for_a_busy_instance_slot() {
    let waits = slot_waits();
    // The slot is free again ~500 ms in; the quick plugin may wait up to 3 s.
    let (outcome, _) = while_the_only_slot_is_held_for(500, 3_000).await;
    let took = outcome.expect("the call ran once the slot came free");
    assert!(
        took >= Duration::from_millis(100),
        "answered in {took:?}: it never waited for the slot"
    );
    assert!(slot_waits() > waits, "the wait is not in the metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_finds_no_slot_within_its_deadline_is_unavailable() {
    let (outcome, good) = while_the_only_slot_is_held_for(1_000, 50).await;
    match outcome {
        Err(HookErrorKind::Unavailable { reason }) => {
            assert!(reason.contains("stayed busy"), "{reason}");
            assert!(reason.contains("50 ms"), "{reason}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    good.price(&cart(&[3])).await.expect("a slot is free again");
}

#[tokio::test]
async fn a_manifest_that_names_another_component_is_refused() {
    let runtime = runtime();
    let wasm = plugins().wasm_bytes("tiered-discount");
    let pinned = |digest: &str| {
        Manifest::parse(&format!(
            "component-sha256 = \"{digest}\"\n{}",
            plugins().manifest_text("tiered-discount")
        ))
        .expect("valid manifest")
    };
    let err = runtime
        .load(pinned(&"0".repeat(64)), &wasm)
        .expect_err("another component's digest");
    assert_eq!(err.code(), "invalid_manifest");
    assert!(err.to_string().contains("component-sha256"), "{err}");
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    runtime
        .load(pinned(&digest), &wasm)
        .expect("its own component loads");
}

#[tokio::test]
async fn loading_refuses_what_is_not_a_plugin_of_the_claimed_hook() {
    let runtime = runtime();
    let wasm = plugins().wasm_bytes("tiered-discount");

    let err = runtime
        .load(manifest("tiered-discount"), b"\0asm garbage")
        .expect_err("garbage refused");
    assert_eq!(err.code(), "invalid_component");

    let mut as_fraud = manifest("tiered-discount");
    as_fraud.hook = HookKind::Fraud;
    let err = runtime
        .load(as_fraud, &wasm)
        .expect_err("wrong hook refused");
    assert_eq!(err.code(), "wrong_export");
    assert!(
        err.to_string().contains("cartridge:plugin/fraud@0.1.0"),
        "{err}"
    );

    let text = plugins()
        .manifest_text("tiered-discount")
        .replace("contract = \"0.1.0\"", "contract = \"0.2.0\"");
    let err = Manifest::parse(&text).expect_err("unsupported contract");
    assert!(err.to_string().contains("0.2.0"));
}

#[tokio::test]
async fn compiled_plugins_are_cached_and_a_damaged_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().expect("tempdir");
    let config = RuntimeConfig {
        cache_dir: Some(cache.path().to_owned()),
        max_instances: 8,
        ..RuntimeConfig::default()
    };
    let cached = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.path())
            .expect("cache dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect()
    };
    {
        let runtime = Runtime::new(config.clone()).expect("runtime");
        load(&runtime, "tiered-discount");
    }
    let entries = cached();
    assert_eq!(entries.len(), 1, "one artifact per component and engine");
    let digest = {
        let runtime = Runtime::new(config.clone()).expect("runtime");
        let plugin = load(&runtime, "tiered-discount");
        plugin
            .price(&cart(&[3]))
            .await
            .expect("works from the cache");
        plugin.digest().to_owned()
    };
    assert!(
        entries[0]
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&digest)),
        "artifacts are named by the component's digest"
    );

    std::fs::write(&entries[0], b"not an artifact").expect("damage");
    let runtime = Runtime::new(config).expect("runtime");
    let plugin = load(&runtime, "tiered-discount");
    plugin.price(&cart(&[3])).await.expect("recompiled");
    assert_ne!(
        std::fs::read(&entries[0]).expect("rewritten"),
        b"not an artifact"
    );
}

#[tokio::test]
async fn a_failing_fail_open_pricing_plugin_is_skipped_and_recorded() {
    let runtime = runtime();
    let chain = vec![
        Arc::new(load(&runtime, "panicker")),
        Arc::new(load(&runtime, "tiered-discount")),
    ];
    let outcome = hooks::price(&chain, &cart(&[3])).await.expect("fail-open");
    assert_eq!(outcome.priced.line_discounts, 150);
    assert_eq!(outcome.decided_by.len(), 1);
    assert_eq!(outcome.decided_by[0].name, "tiered-discount");
    assert_eq!(outcome.skipped.len(), 1);
    assert_eq!(outcome.skipped[0].code, "trap");
}

#[tokio::test]
async fn a_failing_fail_closed_pricing_plugin_stops_the_hook() {
    let runtime = runtime();
    let mut strict = manifest("panicker");
    strict.failure_policy = FailurePolicy::FailClosed;
    let chain = vec![
        Arc::new(load(&runtime, "tiered-discount")),
        Arc::new(load_as(&runtime, "panicker", strict)),
    ];
    let err = hooks::price(&chain, &cart(&[3]))
        .await
        .expect_err("fail-closed");
    assert_eq!(err.code(), "trap");
    assert_eq!(err.plugin.name, "panicker");
}

#[tokio::test]
async fn deadlines_still_fire_after_the_runtime_that_loaded_the_plugin_is_dropped() {
    let plugin = {
        let runtime = runtime();
        load(&runtime, "loop-forever")
    };
    let kind = error_of(&plugin, &cart(&[1])).await;
    assert_eq!(kind.code(), "deadline_exceeded");
}

/// Calls the `stateful` plugin with `codes` entered and returns the label of its discount:
/// "call N", N being the calls its instance has served, this one included.
async fn stateful_call(plugin: &Plugin, codes: &[&str]) -> Result<String, HookErrorKind> {
    let mut cart = cart(&[1]);
    cart.coupon_codes = codes.iter().map(ToString::to_string).collect();
    let call = plugin.price(&cart).await.map_err(|e| e.kind)?;
    Ok(call.output.operations[0].label.clone())
}

#[tokio::test]
async fn an_instance_that_answered_serves_the_plugins_next_calls() {
    let runtime = runtime();
    let plugin = load(&runtime, "stateful");
    for n in 1..=3 {
        assert_eq!(stateful_call(&plugin, &[]).await, Ok(format!("call {n}")));
    }
    // Clones are the same plugin, with the same instances.
    assert_eq!(
        stateful_call(&plugin.clone(), &[]).await,
        Ok("call 4".into())
    );
    // Shadow runs and admin invocations (unwatched) never touch the served plugin's
    // instances.
    assert_eq!(
        stateful_call(&plugin.clone().unwatched(), &[]).await,
        Ok("call 1".into())
    );
    // New configuration or new grants is a new plugin: its calls never see the old
    // instances (a plugin may have read its configuration into its memory).
    let reconfigured = plugin.clone().with_config(&BTreeMap::from([(
        "anything".to_owned(),
        "else".to_owned(),
    )]));
    assert_eq!(stateful_call(&reconfigured, &[]).await, Ok("call 1".into()));
    let regranted = plugin.clone().with_grants(&[], BTreeMap::new());
    assert_eq!(stateful_call(&regranted, &[]).await, Ok("call 1".into()));
    assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 5".into()));
    assert!(runtime.idle_instances() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_the_same_time_never_share_an_instance() {
    let runtime = runtime();
    let plugin = load(&runtime, "stateful");
    assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 1".into()));
    // A call takes the idle instance and spins until its deadline (200 ms)...
    let spinning = {
        let plugin = plugin.clone();
        tokio::spawn(async move { stateful_call(&plugin, &["spin"]).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    // ...while another call gets an instance of its own: its first call.
    assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 1".into()));
    let spun = spinning.await.expect("joined");
    assert_eq!(spun.map_err(|kind| kind.code()), Err("deadline_exceeded"));
    // The spinning call's instance was dropped; the other one was kept.
    assert_eq!(runtime.idle_instances(), 1);
    assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 2".into()));
}

#[tokio::test]
async fn idle_instances_never_keep_a_call_from_getting_a_new_one() {
    // The pool has slots for the running calls plus the idle instances, fiber stacks
    // included: with every idle place taken, a call that needs a new instance still gets one.
    for max_instances in [1, 8] {
        let runtime = Runtime::new(RuntimeConfig {
            max_instances,
            ..RuntimeConfig::default()
        })
        .expect("runtime");
        let stateful = load(&runtime, "stateful");
        // Each configuration is a plugin with its own pool, kept alive with its instance.
        let mut configured = Vec::new();
        for n in 0..max_instances {
            let plugin = stateful
                .clone()
                .with_config(&BTreeMap::from([("n".to_owned(), n.to_string())]));
            assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 1".into()));
            configured.push(plugin);
        }
        assert_eq!(runtime.idle_instances(), max_instances as usize);
        let good = load(&runtime, "tiered-discount");
        let call = good.price(&cart(&[3])).await;
        assert!(call.is_ok(), "{max_instances} slots: {:?}", call.err());
    }
}

#[tokio::test]
async fn an_instance_is_retired_after_its_thousandth_call() {
    let runtime = runtime();
    let plugin = load(&runtime, "stateful");
    for n in 1..=1_000 {
        assert_eq!(stateful_call(&plugin, &[]).await, Ok(format!("call {n}")));
    }
    assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 1".into()));
}

#[tokio::test]
async fn a_call_that_failed_or_reached_outside_its_input_leaves_no_instance_behind() {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("token");
    // Too short to be blanked out of what the plugin says, but read all the same.
    std::fs::write(&path, "abc").expect("secret file");
    let secrets = BTreeMap::from([(
        "token".to_owned(),
        SecretRef::File(path.display().to_string()),
    )]);
    for (code, failure) in [
        ("panic", Some("trap")),
        ("spin", Some("deadline_exceeded")),
        ("nonsense", Some("invalid_output")),
        ("stderr", None),
        ("grow", None),
        ("secret", None),
    ] {
        let plugin =
            load(&runtime, "stateful").with_grants(&[Capability::Secrets], secrets.clone());
        assert_eq!(
            stateful_call(&plugin, &[]).await,
            Ok("call 1".into()),
            "{code}"
        );
        match (stateful_call(&plugin, &[code]).await, failure) {
            (Err(kind), Some(expected)) => assert_eq!(kind.code(), expected, "{code}"),
            (Ok(label), None) => assert_eq!(label, "call 2", "{code}"),
            (other, _) => panic!("{code}: {other:?}"),
        }
        // The next call starts on a new instance: the one that trapped is never entered
        // again, and none that answered nonsense, used WASI, read a secret or grew past the
        // cap is kept.
        assert_eq!(
            stateful_call(&plugin, &[]).await,
            Ok("call 1".into()),
            "{code}"
        );
        assert_eq!(
            stateful_call(&plugin, &[]).await,
            Ok("call 2".into()),
            "{code}"
        );
    }
    still_serving(&runtime).await;
}

#[tokio::test]
async fn a_manifest_or_the_host_can_ask_for_a_new_instance_per_call() {
    let runtime = runtime();
    let text = plugins().manifest_text("stateful");
    let manifest = Manifest::parse(&format!("reuse-instances = false\n{text}")).expect("manifest");
    assert!(!manifest.reuse_instances);
    let plugin = load_as(&runtime, "stateful", manifest);
    for _ in 0..3 {
        assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 1".into()));
    }
    let fresh = Runtime::new(RuntimeConfig {
        max_instances: 8,
        reuse_instances: false,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let plugin = load(&fresh, "stateful");
    for _ in 0..3 {
        assert_eq!(stateful_call(&plugin, &[]).await, Ok("call 1".into()));
    }
    assert_eq!(fresh.idle_instances(), 0);
}

#[tokio::test]
async fn when_every_idle_place_is_taken_the_instance_idle_longest_makes_room() {
    // Two slots for running calls, so two places for idle instances in the whole host.
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 2,
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let stateful = load(&runtime, "stateful");
    let [a, b, c] = ["a", "b", "c"].map(|n| {
        stateful
            .clone()
            .with_config(&BTreeMap::from([("n".to_owned(), n.to_owned())]))
    });
    assert_eq!(stateful_call(&a, &[]).await, Ok("call 1".into()));
    assert_eq!(stateful_call(&b, &[]).await, Ok("call 1".into()));
    assert_eq!(runtime.idle_instances(), 2);
    // c's instance takes the place of a's, idle longest.
    assert_eq!(stateful_call(&c, &[]).await, Ok("call 1".into()));
    assert_eq!(runtime.idle_instances(), 2);
    assert_eq!(stateful_call(&c, &[]).await, Ok("call 2".into()));
    assert_eq!(stateful_call(&b, &[]).await, Ok("call 2".into()));
    assert_eq!(stateful_call(&a, &[]).await, Ok("call 1".into()));
}
