//! Benchmark: checkout over HTTP on loopback against a real `cartridge serve` process.
//!
//! The server runs as its own process (the release binary, the demo store, the example
//! plugins: tiered discount and coupons for pricing, rule-based fraud, the test gateway) so
//! that its peak RSS can be read and the load generator's work is not counted as the server's.
//! Two workloads:
//! - `checkout`: carts of 5 lines prepared beforehand; only the checkout requests are timed
//!   (re-price through 2 pricing plugins, fraud, reserve, authorise, record, commit).
//! - `shopper flow`: create a cart, add 5 lines, check out — timed end to end, at concurrency 1
//!   (latency) and at the load concurrency (throughput).
//!
//! `CARTRIDGE_BENCH_DATABASE_URL=postgres://…` runs it on PostgreSQL (a fresh database is
//! created); otherwise SQLite in a temporary directory. Under `cargo test` it runs a few
//! requests only.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN: &str = "bench-admin";
const SKUS: [&str; 5] = ["TEE-S", "TEE-M", "TEE-L", "SOCK-M", "MUG"];
const PLUGINS: [&str; 5] = [
    "tiered-discount",
    "coupon-promotions",
    "rules-fraud",
    "test-gateway",
    "affinity-personalization",
];

struct Server {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

async fn start(database_url: Option<&str>) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    for name in PLUGINS {
        cartridge_tests::plugins().bundle_into(name, &plugins);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cartridge"));
    cmd.args(["serve", "--demo", "--admin-token", ADMIN, "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--plugins-dir")
        .arg(&plugins)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("CARTRIDGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let child = cmd.spawn()?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(format!("{}/ready", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server did not become ready")
}

async fn post(
    client: &reqwest::Client,
    url: String,
    headers: &[(&str, &str)],
    body: Value,
) -> anyhow::Result<Value> {
    let mut req = client.post(url).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await?;
    let status = r.status();
    let body: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

/// Creates a cart with the five SKUs; returns (id, token).
async fn cart(client: &reqwest::Client, base: &str) -> anyhow::Result<(String, String)> {
    let cart = post(
        client,
        format!("{base}/store/carts"),
        &[],
        json!({"currency": "EUR"}),
    )
    .await?;
    let id = cart["id"].as_str().unwrap_or_default().to_owned();
    let token = cart["token"].as_str().unwrap_or_default().to_owned();
    for sku in SKUS {
        post(
            client,
            format!("{base}/store/carts/{id}/lines"),
            &[("x-cart-token", &token)],
            json!({"sku": sku, "quantity": 1}),
        )
        .await?;
    }
    Ok((id, token))
}

async fn checkout(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    token: &str,
    n: usize,
) -> anyhow::Result<()> {
    post(
        client,
        format!("{base}/store/carts/{id}/checkout"),
        &[("x-cart-token", token), ("idempotency-key", "bench")],
        json!({
            "email": format!("shopper{n}@example.com"),
            "payment_token": "tok_visa",
            "shipping_address": {"name": "Bench", "line1": "Main St 1", "city": "Berlin", "postal_code": "10115", "country": "DE"},
        }),
    )
    .await?;
    Ok(())
}

struct Stats {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

/// Runs `total` jobs with `concurrency` workers; returns the stats.
async fn drive<F, Fut>(total: usize, concurrency: usize, job: F) -> anyhow::Result<Stats>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (job, next) = (job.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let t = Instant::now();
                job(n).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await??);
    }
    Ok(stats(latencies, started.elapsed()))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|a| a == "--bench");
    let (total, concurrency) = if benching { (3_000, 32) } else { (20, 4) };
    let database = std::env::var("CARTRIDGE_BENCH_DATABASE_URL").ok();
    let mut bench_database: Option<(String, String)> = None;
    let (database_url, backend) = match &database {
        Some(admin_url) => {
            use sqlx::Connection;
            let name = format!("cartridge_bench_{}", uuid::Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(admin_url).await?;
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await?;
            let base = admin_url
                .rsplit_once('/')
                .map_or(admin_url.as_str(), |(b, _)| b);
            bench_database = Some((admin_url.clone(), name.clone()));
            (
                Some(format!("{base}/{name}")),
                "PostgreSQL (synchronous_commit = on)",
            )
        }
        None => (None, "SQLite (WAL, synchronous = NORMAL)"),
    };
    let server = start(database_url.as_deref()).await?;
    let base = server.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    for sku in SKUS {
        post(
            &client,
            format!("{base}/admin/inventory/{sku}/berlin/adjust"),
            &[("authorization", &format!("Bearer {ADMIN}"))],
            json!({"delta": 1_000_000, "reason": "bench stock"}),
        )
        .await?;
    }

    let mut carts = Vec::with_capacity(total);
    for _ in 0..total {
        carts.push(cart(&client, &base).await?);
    }
    let carts = Arc::new(carts);
    let checkouts = {
        let (client, base, carts) = (client.clone(), base.clone(), carts.clone());
        drive(total, concurrency, move |n| {
            let (client, base, carts) = (client.clone(), base.clone(), carts.clone());
            async move {
                let (id, token) = &carts[n];
                checkout(&client, &base, id, token, n).await
            }
        })
        .await?
    };
    let flow = |concurrency: usize, total: usize| {
        let (client, base) = (client.clone(), base.clone());
        drive(total, concurrency, move |n| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let (id, token) = cart(&client, &base).await?;
                checkout(&client, &base, &id, &token, n + 1_000_000).await
            }
        })
    };
    let flow_one = flow(1, total / 10).await?;
    let flow_many = flow(concurrency, total / 2).await?;
    let rss = server.peak_rss_kib();
    drop(server);
    if let Some((admin_url, name)) = bench_database {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
    }

    println!(
        "checkout over HTTP on loopback, {backend}; {total} checkouts at concurrency {concurrency}"
    );
    println!("| workload | throughput | p50 | p99 |");
    println!("|---|---|---|---|");
    println!(
        "| checkout (5 lines; 2 pricing plugins, fraud, test gateway) | {:.0}/s | {} | {} |",
        checkouts.per_second,
        ms(checkouts.p50),
        ms(checkouts.p99)
    );
    println!(
        "| shopper flow (create cart, add 5 lines, check out), concurrency 1 | {:.0} flows/s | {} | {} |",
        flow_one.per_second,
        ms(flow_one.p50),
        ms(flow_one.p99)
    );
    println!(
        "| shopper flow, concurrency {concurrency} | {:.0} flows/s | {} | {} |",
        flow_many.per_second,
        ms(flow_many.p50),
        ms(flow_many.p99)
    );
    println!(
        "server peak RSS: {}",
        rss.map_or("unknown".to_owned(), |k| format!(
            "{:.0} MiB",
            k as f64 / 1024.0
        ))
    );
    if !benching {
        println!("(smoke run: use `cargo xtask bench` for real figures)");
    }
    Ok(())
}
