//! Benchmark: one pricing hook call on a 5-line cart.
//!
//! Measured in one run, so the ratios compare like with like on this machine:
//! - `wasm reused instance`: what a real call does by default — the instance an earlier call
//!   of the plugin left idle, the call with its deadline and fuel set up, output validation.
//! - `wasm fresh instance`: what a call does with reuse off (`reuse-instances = false`,
//!   `--fresh-instances`) — a new store, an instance from the pooling allocator, the call,
//!   output validation; with fuel counting (the default) and on an engine without it.
//! - `wasm live instance`: bare calls on one instance, nothing set up between them (the floor).
//! - `native`: the same rule compiled into the host.
//!
//! `cargo xtask bench` runs it in release; under `cargo test` it runs a few iterations only.

use std::time::{Duration, Instant};

use cartridge_host::plugin::bindings::pricing::{
    Action, Cart, CartLine, DiscountValue, LineDiscount, Operation, Stacking,
};
use cartridge_host::plugin::bindings::types::Money;
use cartridge_host::plugin::{Manifest, Plugin, Runtime, RuntimeConfig};

fn cart() -> Cart {
    Cart {
        id: "bench-cart".into(),
        currency: "EUR".into(),
        lines: [1u32, 3, 12, 30, 2]
            .iter()
            .enumerate()
            .map(|(i, &quantity)| CartLine {
                id: format!("line-{i}"),
                product_id: format!("product-{i}"),
                sku: format!("SKU-{i}"),
                variant_attributes: vec![],
                categories: vec!["apparel".into()],
                quantity,
                unit_price: Money {
                    amount: 1999,
                    currency: "EUR".into(),
                },
            })
            .collect(),
        customer: None,
        coupon_codes: vec![],
        shipping: None,
        now: 0,
    }
}

/// The tiered-discount plugin's rule, natively: same tiers, same operations, same labels.
fn native_tiered(cart: &Cart) -> Vec<Operation> {
    const TIERS: &[(u32, u32)] = &[(3, 500), (10, 1000), (25, 1500)];
    cart.lines
        .iter()
        .filter_map(|line| {
            let &(min, bp) = TIERS.iter().rev().find(|(min, _)| line.quantity >= *min)?;
            Some(Operation {
                action: Action::LineDiscount(LineDiscount {
                    line_id: line.id.clone(),
                    value: DiscountValue::BasisPoints(bp),
                    quantity: None,
                }),
                label: format!("{} % off {min} or more", bp / 100),
                code: None,
                stacking: Stacking::Combine,
            })
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

struct Plan {
    samples: usize,
    batch: u32,
}

fn tiered(runtime: &Runtime) -> anyhow::Result<Plugin> {
    let plugins = cartridge_tests::plugins();
    Ok(runtime.load(
        Manifest::parse(&plugins.manifest_text("tiered-discount"))?,
        &plugins.wasm_bytes("tiered-discount"),
    )?)
}

/// Calls through `Plugin::price`, as the pipeline makes them.
async fn calls(runtime: &Runtime, plan: &Plan) -> anyhow::Result<Duration> {
    let plugin = tiered(runtime)?;
    let cart = cart();
    for _ in 0..plan.batch {
        plugin.price(&cart).await?;
    }
    let mut samples = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        let started = Instant::now();
        for _ in 0..plan.batch {
            std::hint::black_box(plugin.price(&cart).await?);
        }
        samples.push(started.elapsed() / plan.batch);
    }
    Ok(median(samples))
}

async fn live(runtime: &Runtime, plan: &Plan) -> anyhow::Result<Duration> {
    let plugin = tiered(runtime)?;
    let cart = cart();
    plugin
        .bench_price_on_one_instance(&cart, plan.batch)
        .await?;
    let mut samples = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        samples.push(
            plugin
                .bench_price_on_one_instance(&cart, plan.batch)
                .await?
                / plan.batch,
        );
    }
    Ok(median(samples))
}

fn native(plan: &Plan) -> Duration {
    let cart = cart();
    let batch = plan.batch * 100;
    let mut samples = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        let started = Instant::now();
        for _ in 0..batch {
            std::hint::black_box(native_tiered(std::hint::black_box(&cart)));
        }
        samples.push(started.elapsed() / batch);
    }
    median(samples)
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|a| a == "--bench");
    let plan = if benching {
        Plan {
            samples: 31,
            batch: 2_000,
        }
    } else {
        Plan {
            samples: 3,
            batch: 5,
        }
    };
    let with_fuel = Runtime::new(RuntimeConfig::default())?;
    let fresh_with_fuel = Runtime::new(RuntimeConfig {
        reuse_instances: false,
        ..RuntimeConfig::default()
    })?;
    let fresh_without_fuel = Runtime::new(RuntimeConfig {
        consume_fuel: false,
        reuse_instances: false,
        ..RuntimeConfig::default()
    })?;
    let reused = calls(&with_fuel, &plan).await?;
    let fresh_fuel = calls(&fresh_with_fuel, &plan).await?;
    let fresh_plain = calls(&fresh_without_fuel, &plan).await?;
    let live_plain = live(&fresh_without_fuel, &plan).await?;
    let native = native(&plan);
    // The same operations, or the comparison means nothing.
    assert_eq!(
        tiered(&with_fuel)?.price(&cart()).await?.output.operations,
        native_tiered(&cart()),
        "the native rule must match the plugin"
    );

    let ratio = |d: Duration| d.as_secs_f64() / native.as_secs_f64();
    println!(
        "pricing hook, 5-line cart, median per call ({} samples × {} calls)",
        plan.samples, plan.batch
    );
    println!("| case | median | × native |");
    println!("|---|---|---|");
    for (name, d) in [
        ("wasm, reused instance (fuel counted; the default)", reused),
        ("wasm, fresh instance per call (fuel counted)", fresh_fuel),
        ("wasm, fresh instance per call (no fuel)", fresh_plain),
        ("wasm, one live instance (no fuel)", live_plain),
        ("native Rust, same rule", native),
    ] {
        println!("| {name} | {} | {:.0}× |", micros(d), ratio(d));
    }
    if !benching {
        println!("(smoke run: use `cargo xtask bench` for real figures)");
    }
    Ok(())
}
