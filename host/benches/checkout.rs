//! Benchmark: checkout over HTTP on loopback against a real `cartridge serve` process.
//!
//! The server runs as its own process (the release binary, the demo store, the example
//! plugins: tiered discount and coupons for pricing, rule-based fraud, the test gateway) so
//! that its peak RSS can be read and the load generator's work is not counted as the server's.
//! Workloads:
//! - `checkout`: carts of 5 lines prepared beforehand; only the checkout requests are timed
//!   (re-price through 2 pricing plugins with the standard shipping rate, fraud, reserve,
//!   authorise, record, commit).
//! - the same with the plugins' own source compiled into the server (`--native-rules`, in a
//!   build with the `native-rules` feature — `cargo xtask bench` passes it): a fresh server and
//!   database each, Wasm and native in turn for three rounds (`CARTRIDGE_BENCH_ROUNDS`), which
//!   goes first swapped every round; the ratio is of the medians. The first order of each is
//!   compared, and the run fails if the two builds of the rules decided differently.
//! - `shopper flow`: create a cart, add 5 lines, check out — timed end to end, at concurrency 1
//!   (latency) and at the load concurrency (throughput).
//! - `checkout, spread`: the checkout workload again, but each cart holds 5 of 1,000 SKUs (a
//!   catalog the benchmark adds) instead of the same 5 demo SKUs. Every demo-SKU checkout
//!   locks the same five stock rows — a flash sale, the worst case for row locks — so this one
//!   shows the checkout path when shoppers buy different things.
//! - `checkout, concurrency 16`: the checkout workload with 16 requests in flight instead of
//!   the load concurrency, where issue 3's p99 goal is judged (BENCHMARKS.md: with 32 in flight,
//!   3,000 checkouts/s already means a p50 above 10 ms).
//!
//! `CARTRIDGE_BENCH_DATABASE_URL=postgres://…` runs it on PostgreSQL (a fresh database per
//! server); otherwise SQLite in a temporary directory. Under `cargo test` it runs a few
//! requests only (and the comparison once, in a `native-rules` build). Other knobs:
//! `CARTRIDGE_BENCH_SERVER` (another build of the server, for an A/B),
//! `CARTRIDGE_BENCH_CONCURRENCY`, `CARTRIDGE_BENCH_CHECKOUTS`, `CARTRIDGE_BENCH_ONLY=wasm`
//! (one Wasm server and its flows, nothing else: for profiling), and
//! `CARTRIDGE_BENCH_LATENCIES=<dir>` (every timed request's start and latency, a CSV per run).
//! Each checkout run also reports the server's CPU time per checkout, and the load generator's
//! own: the timed requests go through [`Conn`], a bare keep-alive HTTP/1.1 connection, so that
//! the generator takes as little as it can of the two cores it shares with the server.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ADMIN: &str = "bench-admin";
const SKUS: [&str; 5] = ["TEE-S", "TEE-M", "TEE-L", "SOCK-M", "MUG"];
/// Variants per product of the spread catalog.
const SPREAD_VARIANTS: usize = 100;
/// Requests in flight in the run that the p99 goal is judged on.
const LATENCY_CONCURRENCY: usize = 16;
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
    /// CPU time the server has used so far.
    fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.child.id())
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

/// CPU time process `pid` has used so far (user and system), from `/proc`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports clock ticks of 1/100 s on Linux.
    Some(Duration::from_millis(ticks * 10))
}

async fn start(database_url: Option<&str>, native: bool) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let plugins = dir.path().join("plugins");
    for name in PLUGINS {
        cartridge_tests::plugins().bundle_into(name, &plugins);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Another build of the server (say, the code before a change) for a same-machine A/B.
    let exe = std::env::var("CARTRIDGE_BENCH_SERVER")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_cartridge").to_owned());
    let mut cmd = Command::new(exe);
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
    if native {
        cmd.arg("--native-rules");
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

/// A keep-alive HTTP/1.1 connection to the server for the requests the benchmark times: it
/// writes a request in one buffer and reads the answer by its `content-length` (axum sends
/// one with every JSON answer), and parses nothing else. The general client used before
/// (reqwest: its pool, header maps, every answer parsed into a JSON tree) cost the load
/// generator ~75 µs of CPU per checkout on the two cores it shares with the server.
struct Conn {
    stream: tokio::net::TcpStream,
    host: String,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Conn {
    async fn open(host: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            host: host.to_owned(),
            request: Vec::with_capacity(2048),
            answer: Vec::with_capacity(16 * 1024),
        })
    }

    /// POSTs the JSON `body` to `path`; the answer's status and body.
    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, &[u8])> {
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        self.request.clear();
        write!(
            self.request,
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        )?;
        for (name, value) in headers {
            write!(self.request, "{name}: {value}\r\n")?;
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        self.answer.clear();
        let head = loop {
            if let Some(at) = self.answer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            anyhow::ensure!(
                self.stream.read_buf(&mut self.answer).await? > 0,
                "the server closed the connection"
            );
        };
        let text = std::str::from_utf8(&self.answer[..head])?;
        let status: u16 = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {text}"))?;
        let length: usize = text
            .split("\r\n")
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| anyhow::anyhow!("an answer without a content-length: {text}"))?;
        while self.answer.len() < head + length {
            anyhow::ensure!(
                self.stream.read_buf(&mut self.answer).await? > 0,
                "the server closed the connection mid-answer"
            );
        }
        Ok((status, &self.answer[head..head + length]))
    }

    /// [`Conn::post`] that must succeed; the answer's body.
    async fn post_ok(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<&[u8]> {
        let (status, answer) = self.post(path, headers, body).await?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{path}: {status}: {}",
            String::from_utf8_lossy(answer)
        );
        Ok(answer)
    }
}

/// Open connections to the server, one per request in flight: a request takes one (or opens
/// one) and gives it back when answered.
#[derive(Clone)]
struct Conns {
    host: Arc<str>,
    idle: Arc<std::sync::Mutex<Vec<Conn>>>,
}

impl Conns {
    fn new(base: &str) -> Self {
        Self {
            host: base.trim_start_matches("http://").into(),
            idle: Arc::default(),
        }
    }

    async fn take(&self) -> anyhow::Result<Conn> {
        let idle = self
            .idle
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => Conn::open(&self.host).await,
        }
    }

    fn give(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}

/// Creates a cart with `skus`; returns (id, token).
async fn cart(conns: &Conns, skus: &[String]) -> anyhow::Result<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Made {
        id: String,
        token: String,
    }
    let mut conn = conns.take().await?;
    let made: Made = serde_json::from_slice(
        conn.post_ok("/store/carts", &[], br#"{"currency":"EUR"}"#)
            .await?,
    )?;
    let path = format!("/store/carts/{}/lines", made.id);
    for sku in skus {
        let line = format!(r#"{{"sku":"{sku}","quantity":1}}"#);
        conn.post_ok(&path, &[("x-cart-token", &made.token)], line.as_bytes())
            .await?;
    }
    conns.give(conn);
    Ok((made.id, made.token))
}

/// Checks cart `id` out as shopper `n`; what `read` makes of the answer.
async fn checkout<T>(
    conns: &Conns,
    id: &str,
    token: &str,
    n: usize,
    read: impl FnOnce(&[u8]) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let body = format!(
        r#"{{"email":"shopper{n}@example.com","payment_token":"tok_visa","shipping_address":{{"name":"Bench","line1":"Main St 1","city":"Berlin","postal_code":"10115","country":"DE"}},"shipping_method":"standard"}}"#
    );
    let mut conn = conns.take().await?;
    let path = format!("/store/carts/{id}/checkout");
    let answer = conn
        .post_ok(
            &path,
            &[("x-cart-token", token), ("idempotency-key", "bench")],
            body.as_bytes(),
        )
        .await?;
    let read = read(answer);
    conns.give(conn);
    read
}

/// An answer read for nothing but its status.
fn ignore(_: &[u8]) -> anyhow::Result<()> {
    Ok(())
}

struct Stats {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Each request's start (from the run's) and latency, in the order they started.
    requests: Vec<(Duration, Duration)>,
}

fn stats(mut requests: Vec<(Duration, Duration)>, elapsed: Duration) -> Stats {
    requests.sort();
    let mut latencies: Vec<Duration> = requests.iter().map(|&(_, l)| l).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        requests,
    }
}

/// With `CARTRIDGE_BENCH_LATENCIES=<dir>`, writes a run's requests to `<dir>/<name>.csv`, one
/// line each: when it started (µs into the run) and how long it took (µs). The tail of a run
/// is easier to explain from when its slow requests happened: spread out, or in bursts.
fn dump(name: &str, stats: &Stats) -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("CARTRIDGE_BENCH_LATENCIES") else {
        return Ok(());
    };
    let mut csv = String::from("start_us,latency_us\n");
    for (start, latency) in &stats.requests {
        csv.push_str(&format!("{},{}\n", start.as_micros(), latency.as_micros()));
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.csv")), csv)?;
    Ok(())
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
                latencies.push((t - started, t.elapsed()));
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

/// A database for one server: a fresh PostgreSQL database when `admin_url` is set (dropped
/// with the value), else none (the server's own SQLite file).
struct Database {
    url: Option<String>,
    drop_with: Option<(String, String)>,
}

impl Database {
    async fn fresh(admin_url: Option<&str>) -> anyhow::Result<Self> {
        let Some(admin_url) = admin_url else {
            return Ok(Self {
                url: None,
                drop_with: None,
            });
        };
        use sqlx::Connection;
        let name = format!("cartridge_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
        Ok(Self {
            url: Some(format!("{base}/{name}")),
            drop_with: Some((admin_url.to_owned(), name)),
        })
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        if let Some((admin_url, name)) = self.drop_with {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// Which SKUs the carts of a run hold.
#[derive(Clone, Copy, PartialEq)]
enum Carts {
    /// The same five demo SKUs in every cart.
    Hot,
    /// 5 of the SKUs of a catalog of this many added for the run, different for each cart.
    Spread(usize),
}

/// Adds a catalog of `size` SKUs and stocks it; returns its SKUs.
async fn spread_catalog(
    client: &reqwest::Client,
    base: &str,
    size: usize,
) -> anyhow::Result<Vec<String>> {
    let auth = format!("Bearer {ADMIN}");
    let mut skus = Vec::with_capacity(size);
    for p in 0..size.div_ceil(SPREAD_VARIANTS) {
        let variants: Vec<Value> = (0..SPREAD_VARIANTS.min(size - p * SPREAD_VARIANTS))
            .map(|v| {
                let sku = format!("SPREAD-{p}-{v}");
                skus.push(sku.clone());
                json!({"sku": sku, "title": format!("#{v}"), "prices": {"EUR": 1000 + 10 * v}})
            })
            .collect();
        post(
            client,
            format!("{base}/admin/products"),
            &[("authorization", &auth)],
            json!({"title": format!("Spread {p}"), "variants": variants}),
        )
        .await?;
    }
    for sku in &skus {
        post(
            client,
            format!("{base}/admin/inventory/{sku}/berlin/adjust"),
            &[("authorization", &auth)],
            json!({"delta": 1_000_000, "reason": "bench stock"}),
        )
        .await?;
    }
    Ok(skus)
}

/// The SKUs of cart `n`: 5 distinct ones of `catalog` (at least 5), picked by a fixed
/// pseudo-random walk, so every run sees the same carts.
fn spread_skus(catalog: &[String], n: usize) -> Vec<String> {
    let mut picked: Vec<String> = Vec::with_capacity(5);
    let mut at = n.wrapping_mul(2_654_435_761);
    while picked.len() < 5 {
        at = at.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let sku = &catalog[(at >> 33) % catalog.len()];
        if !picked.contains(sku) {
            picked.push(sku.clone());
        }
    }
    picked
}

/// One server's run: the checkout workload, and (when asked) the shopper flows.
struct Run {
    checkouts: Stats,
    /// The server's CPU time per checkout during the checkout workload.
    cpu_per_checkout: Option<Duration>,
    /// The load generator's (this process's).
    client_cpu_per_checkout: Option<Duration>,
    /// The first checkout's answer, to compare the decisions of the two builds of the rules.
    first_order: Value,
    flows: Option<(Stats, Stats)>,
    rss_kib: Option<u64>,
}

async fn run(
    admin_url: Option<&str>,
    native: bool,
    carts_of: Carts,
    total: usize,
    concurrency: usize,
    with_flows: bool,
) -> anyhow::Result<Run> {
    let database = Database::fresh(admin_url).await?;
    let server = start(database.url.as_deref(), native).await?;
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
    let hot: Vec<String> = SKUS.iter().map(|s| (*s).to_owned()).collect();
    let catalog = match carts_of {
        Carts::Hot => Vec::new(),
        Carts::Spread(size) => spread_catalog(&client, &base, size).await?,
    };
    let conns = Conns::new(&base);
    // Set-up, not measured: the carts are prepared concurrently, in the order of their number.
    let prepared = Arc::new(std::sync::Mutex::new(vec![None; total]));
    {
        let (conns, prepared) = (conns.clone(), prepared.clone());
        let (hot, catalog) = (Arc::new(hot.clone()), Arc::new(catalog));
        drive(total, concurrency.min(8), move |n| {
            let (conns, prepared) = (conns.clone(), prepared.clone());
            let skus = match carts_of {
                Carts::Hot => hot.to_vec(),
                Carts::Spread(_) => spread_skus(&catalog, n),
            };
            async move {
                let made = cart(&conns, &skus).await?;
                prepared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[n] = Some(made);
                Ok(())
            }
        })
        .await?;
    }
    let carts: Vec<(String, String)> =
        std::mem::take(&mut *prepared.lock().map_err(|_| anyhow::anyhow!("poisoned"))?)
            .into_iter()
            .flatten()
            .collect();
    eprintln!(
        "bench: {} carts prepared on server pid {}; checking out",
        carts.len(),
        server.child.id()
    );
    let first_order = checkout(&conns, &carts[0].0, &carts[0].1, 0, |answer| {
        Ok(serde_json::from_slice::<Value>(answer)?)
    })
    .await?;
    let carts = Arc::new(carts);
    let (cpu_before, client_cpu_before) = (server.cpu_time(), cpu_time(std::process::id()));
    let checkouts = {
        let (conns, carts) = (conns.clone(), carts.clone());
        drive(total - 1, concurrency, move |n| {
            let (conns, carts) = (conns.clone(), carts.clone());
            async move {
                let (id, token) = &carts[n + 1];
                checkout(&conns, id, token, n + 1, ignore).await
            }
        })
        .await?
    };
    let per_checkout = |before: Option<Duration>, after: Option<Duration>| {
        before.zip(after).map(|(before, after)| {
            (after.saturating_sub(before)) / u32::try_from(total - 1).unwrap_or(u32::MAX)
        })
    };
    let cpu_per_checkout = per_checkout(cpu_before, server.cpu_time());
    let client_cpu_per_checkout = per_checkout(client_cpu_before, cpu_time(std::process::id()));
    let flows = if with_flows {
        let flow = |concurrency: usize, total: usize| {
            let (conns, hot) = (conns.clone(), hot.clone());
            drive(total, concurrency, move |n| {
                let (conns, hot) = (conns.clone(), hot.clone());
                async move {
                    let (id, token) = cart(&conns, &hot).await?;
                    checkout(&conns, &id, &token, n + 1_000_000, ignore).await
                }
            })
        };
        Some((
            flow(1, total / 10).await?,
            flow(concurrency, total / 2).await?,
        ))
    } else {
        None
    };
    let rss_kib = server.peak_rss_kib();
    drop(server);
    database.drop_now().await?;
    Ok(Run {
        checkouts,
        cpu_per_checkout,
        client_cpu_per_checkout,
        first_order,
        flows,
        rss_kib,
    })
}

/// What the rules decided for an order, without what names the build or the attempt.
fn decided(order: &Value) -> Value {
    json!({
        "subtotal": order["subtotal"],
        "discount_total": order["discount_total"],
        "total": order["total"],
        "lines": order["lines"],
        "applied": order["decisions"]["applied"],
        "fraud": [order["decisions"]["fraud"]["decision"], order["decisions"]["fraud"]["score"], order["decisions"]["fraud"]["reasons"]],
        "authorized": order["payment"]["authorized"],
        "status": order["status"],
    })
}

fn row(name: &str, s: &Stats) -> String {
    format!(
        "| {name} | {:.0}/s | {} | {} |",
        s.per_second,
        ms(s.p50),
        ms(s.p99)
    )
}

/// A checkout run's row, with the server's and the load generator's CPU time per checkout.
fn checkout_row(name: &str, r: &Run) -> String {
    let cpu = |d: Option<Duration>| {
        d.map_or("?".to_owned(), |d| {
            format!("{:.0} µs", d.as_secs_f64() * 1e6)
        })
    };
    format!(
        "{} {} | {} |",
        row(name, &r.checkouts),
        cpu(r.cpu_per_checkout),
        cpu(r.client_cpu_per_checkout)
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|a| a == "--bench");
    // 10,000 a run: shorter runs on this shared machine spread the Wasm ÷ native ratio from
    // 0.81 to 0.99 for the same two builds.
    let (total, concurrency) = if benching { (10_000, 32) } else { (20, 4) };
    let setting = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|&c: &usize| c > 0)
    };
    // More checkouts, for a run long enough to profile.
    let total = setting("CARTRIDGE_BENCH_CHECKOUTS").unwrap_or(total);
    // Another load level, for finding where throughput stops growing with concurrency.
    let concurrency = setting("CARTRIDGE_BENCH_CONCURRENCY").unwrap_or(concurrency);
    // `wasm` alone: one Wasm checkout run with its flows, nothing else (for profiling).
    let only_wasm = std::env::var("CARTRIDGE_BENCH_ONLY").is_ok_and(|v| v == "wasm");
    let admin_url = std::env::var("CARTRIDGE_BENCH_DATABASE_URL").ok();
    let backend = if admin_url.is_some() {
        "PostgreSQL (synchronous_commit = on)"
    } else {
        "SQLite (WAL, synchronous = NORMAL)"
    };
    // Wasm and the same rules native in turn, three rounds, which goes first swapped every
    // round, so that drift on this shared machine (a slow spell lasts seconds) falls on both
    // alike; the ratio is of the medians, so one run caught in a slow spell does not decide
    // it. Without the `native-rules` build only the Wasm runs.
    let compare = cfg!(feature = "native-rules") && !only_wasm;
    let rounds = if compare && benching {
        setting("CARTRIDGE_BENCH_ROUNDS").unwrap_or(3)
    } else {
        1
    };
    let mut wasm = Vec::new();
    let mut native = Vec::new();
    let admin = admin_url.as_deref();
    for round in 0..rounds {
        if compare && !round.is_multiple_of(2) {
            native.push(run(admin, true, Carts::Hot, total, concurrency, false).await?);
        }
        wasm.push(run(admin, false, Carts::Hot, total, concurrency, round == 0).await?);
        if compare && round.is_multiple_of(2) {
            native.push(run(admin, true, Carts::Hot, total, concurrency, false).await?);
        }
    }
    let spread_size = if benching { 1_000 } else { 20 };
    let spread = if only_wasm {
        None
    } else {
        Some(
            run(
                admin,
                false,
                Carts::Spread(spread_size),
                total,
                concurrency,
                false,
            )
            .await?,
        )
    };
    let latency_concurrency = if benching { LATENCY_CONCURRENCY } else { 2 };
    let latency = if only_wasm || concurrency == latency_concurrency {
        None
    } else {
        Some(run(admin, false, Carts::Hot, total, latency_concurrency, false).await?)
    };
    if let Some(n) = native.first() {
        anyhow::ensure!(
            decided(&wasm[0].first_order) == decided(&n.first_order),
            "the native rules decided differently:\nwasm:   {}\nnative: {}",
            decided(&wasm[0].first_order),
            decided(&n.first_order)
        );
    }

    for (i, r) in wasm.iter().enumerate() {
        dump(&format!("checkout-wasm-{}", i + 1), &r.checkouts)?;
    }
    for (i, r) in native.iter().enumerate() {
        dump(&format!("checkout-native-{}", i + 1), &r.checkouts)?;
    }
    if let Some(spread) = &spread {
        dump("checkout-spread", &spread.checkouts)?;
    }
    if let Some(latency) = &latency {
        dump(
            &format!("checkout-c{latency_concurrency}"),
            &latency.checkouts,
        )?;
    }
    if let Some((one, many)) = &wasm[0].flows {
        dump("flow-c1", one)?;
        dump(&format!("flow-c{concurrency}"), many)?;
    }

    println!(
        "checkout over HTTP on loopback, {backend}; {total} checkouts at concurrency {concurrency}"
    );
    println!(
        "| workload | throughput | p50 | p99 | server CPU per checkout | load generator CPU |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, r) in wasm.iter().enumerate() {
        println!(
            "{}",
            checkout_row(
                &format!(
                    "checkout (5 lines; 2 pricing plugins, fraud, test gateway), Wasm, run {}",
                    i + 1
                ),
                r
            )
        );
    }
    for (i, r) in native.iter().enumerate() {
        println!(
            "{}",
            checkout_row(
                &format!(
                    "checkout, the same plugins' source compiled natively, run {}",
                    i + 1
                ),
                r
            )
        );
    }
    if let Some(spread) = &spread {
        println!(
            "{}",
            checkout_row(
                &format!(
                    "checkout, Wasm, each cart 5 of {spread_size} SKUs (spread, not the same 5)"
                ),
                spread
            )
        );
    }
    if let Some(latency) = &latency {
        println!(
            "{}",
            checkout_row(
                &format!(
                    "checkout, Wasm, concurrency {latency_concurrency} (where the p99 goal is judged)"
                ),
                latency
            )
        );
    }
    if let Some((one, many)) = &wasm[0].flows {
        println!(
            "{} |",
            row(
                "shopper flow (create cart, add 5 lines, check out), concurrency 1",
                one
            )
        );
        println!(
            "{} |",
            row(&format!("shopper flow, concurrency {concurrency}"), many)
        );
    }
    if !native.is_empty() {
        let median = |runs: &[Run]| {
            let mut rates: Vec<f64> = runs.iter().map(|r| r.checkouts.per_second).collect();
            rates.sort_by(f64::total_cmp);
            let mid = rates.len() / 2;
            if rates.len().is_multiple_of(2) {
                (rates[mid - 1] + rates[mid]) / 2.0
            } else {
                rates[mid]
            }
        };
        println!(
            "Wasm / native checkout throughput: {:.2} (medians of {} runs each; the first order's decisions are identical)",
            median(&wasm) / median(&native),
            wasm.len()
        );
    }
    println!(
        "server peak RSS: {}",
        wasm[0].rss_kib.map_or("unknown".to_owned(), |k| format!(
            "{:.0} MiB",
            k as f64 / 1024.0
        ))
    );
    if !benching {
        println!("(smoke run: use `cargo xtask bench` for real figures)");
    }
    Ok(())
}
