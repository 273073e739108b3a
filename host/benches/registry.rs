//! Benchmark: the plugin registry on SQLite and PostgreSQL (when `CARTRIDGE_TEST_DATABASE_URL`
//! is set).
//!
//! - `cold start`: a host opening a registry of 20 active plugins — with an empty compiled
//!   cache (every component compiled) and with the cache another start left behind.
//! - `swap`: three hosts on one database, each following it at the default poll interval (and
//!   LISTEN/NOTIFY on PostgreSQL); the time from the activate call on one host until all three
//!   serve the new version.
//! - `file drop`: the same from writing a new manifest version into a plugins directory
//!   watched by the first host.
//!
//! `cargo xtask bench` runs it in release; under `cargo test` it runs a few iterations only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cartridge_host::db::Db;
use cartridge_host::plugin::{Runtime, RuntimeConfig};
use cartridge_host::registry::{Registry, RegistryConfig};

fn runtime(cache: &std::path::Path) -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(Runtime::new(RuntimeConfig {
        cache_dir: Some(cache.to_owned()),
        max_instances: 64,
        ..RuntimeConfig::default()
    })?))
}

fn manifest(name: &str, version: &str) -> String {
    cartridge_tests::plugins()
        .manifest_text("tiered-discount")
        .replace("name = \"tiered-discount\"", &format!("name = \"{name}\""))
        .replace("version = \"1.0.0\"", &format!("version = \"{version}\""))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn bench(url: &str, backend: &str, plugins: usize, swaps: usize) -> anyhow::Result<()> {
    let db = Db::connect(url).await?;
    db.migrate().await?;
    let wasm = cartridge_tests::plugins().wasm_bytes("tiered-discount");
    let seed_cache = tempfile::tempdir()?;
    let seeder = Registry::open(
        db.clone(),
        runtime(seed_cache.path())?,
        RegistryConfig::default(),
    )
    .await?;
    for i in 0..plugins {
        let name = format!("bench-{i:02}");
        seeder
            .upload("bench", "api", &manifest(&name, "1.0.0"), wasm.clone())
            .await?;
        seeder.activate("bench", &name, "1.0.0").await?;
    }

    // Cold start, empty cache, then warm cache (the same directory).
    let cache = tempfile::tempdir()?;
    let started = Instant::now();
    let cold = Registry::open(
        db.clone(),
        runtime(cache.path())?,
        RegistryConfig::default(),
    )
    .await?;
    let cold_time = started.elapsed();
    assert_eq!(cold.snapshot().plugins().count(), plugins);
    drop(cold);
    let started = Instant::now();
    let warm = Registry::open(
        db.clone(),
        runtime(cache.path())?,
        RegistryConfig::default(),
    )
    .await?;
    let warm_time = started.elapsed();
    assert_eq!(warm.snapshot().plugins().count(), plugins);
    drop(warm);
    println!(
        "{backend}: cold start with {plugins} plugins: {} with an empty cache, {} with a warm cache",
        ms(cold_time),
        ms(warm_time)
    );

    // Three hosts; swaps through the first.
    let mut hosts = Vec::new();
    let mut tasks = Vec::new();
    let mut caches = Vec::new();
    for _ in 0..3 {
        let cache = tempfile::tempdir()?;
        let host = Registry::open(
            db.clone(),
            runtime(cache.path())?,
            RegistryConfig::default(),
        )
        .await?;
        tasks.extend(host.spawn());
        hosts.push(host);
        caches.push(cache);
    }
    seeder
        .upload("bench", "api", &manifest("bench-00", "2.0.0"), wasm.clone())
        .await?;
    let mut times = Vec::with_capacity(swaps);
    for swap in 0..swaps {
        let version = if swap % 2 == 0 { "2.0.0" } else { "1.0.0" };
        let started = Instant::now();
        hosts[0].activate("bench", "bench-00", version).await?;
        loop {
            let everywhere = hosts.iter().all(|h| {
                h.snapshot()
                    .get("bench-00")
                    .is_some_and(|p| p.manifest().version.to_string() == version)
            });
            if everywhere {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "swap not seen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    let api_times = times;

    // A file drop into a plugins directory watched by the first host, as `cartridge serve`
    // watches it.
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("bench-00");
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(bundle.join("plugin.wasm"), &wasm)?;
    std::fs::write(bundle.join("plugin.toml"), manifest("bench-00", "3.0.0"))?;
    let mut directory = cartridge_host::registry::directory::PluginsDirectory::new(
        dir.path().to_owned(),
        hosts[0].clone(),
    );
    directory.scan().await;
    let watcher = tokio::spawn(directory.watch(
        cartridge_host::registry::directory::DEBOUNCE,
        Duration::from_secs(10),
    ));
    let mut drops = Vec::with_capacity(swaps);
    for drop in 0..swaps {
        let version = format!("3.0.{}", drop + 1);
        let started = Instant::now();
        std::fs::write(bundle.join("plugin.toml"), manifest("bench-00", &version))?;
        loop {
            let everywhere = hosts.iter().all(|h| {
                h.snapshot()
                    .get("bench-00")
                    .is_some_and(|p| p.manifest().version.to_string() == version)
            });
            if everywhere {
                break;
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "drop not seen");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drops.push(started.elapsed());
    }
    watcher.abort();
    drops.sort();
    println!(
        "{backend}: file drop to serving on all 3 hosts ({} drops, debounce {} ms): median {}, p90 {}, max {}",
        swaps,
        cartridge_host::registry::directory::DEBOUNCE.as_millis(),
        ms(percentile(&drops, 0.5)),
        ms(percentile(&drops, 0.9)),
        ms(percentile(&drops, 1.0)),
    );
    let times = api_times;
    println!(
        "{backend}: swap to serving on all 3 hosts ({} swaps, poll {} ms): median {}, p90 {}, max {}",
        swaps,
        RegistryConfig::default().poll_interval.as_millis(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.9)),
        ms(percentile(&times, 1.0)),
    );
    for task in tasks {
        task.abort();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|a| a == "--bench");
    let (plugins, swaps) = if benching { (20, 40) } else { (3, 4) };
    for db in cartridge_tests::test_databases().await {
        let backend = db.backend;
        bench(&db.url, backend, plugins, swaps).await?;
        db.drop_database().await;
    }
    Ok(())
}
