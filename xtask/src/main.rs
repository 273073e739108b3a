//! `cargo xtask <verb>`: the project's tasks, in Rust rather than shell.
//!
//! - `demo`: build the example plugins and run the host as a demo store on SQLite, with them
//!   active.
//! - `test`: everything CI checks — the whole test suite (host, SDK doc examples, end-to-end
//!   tests, the plugins' own unit tests), formatting and clippy.
//! - `bench`: the benchmarks (release build): the hook call, and checkout over HTTP on SQLite
//!   (and PostgreSQL when `CARTRIDGE_TEST_DATABASE_URL` is set).
//! - `plugins`: build the plugins workspace for wasm32-wasip2.
//!
//! Each verb first makes sure the wasm32-wasip2 target is installed, so the README's two
//! commands work on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

const WASM_TARGET: &str = "wasm32-wasip2";

/// The example plugins the demo installs.
const DEMO_PLUGINS: &[&str] = &[
    "tiered-discount",
    "coupon-promotions",
    "rules-fraud",
    "affinity-personalization",
    "test-gateway",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("plugins") => build_plugins().map(|_| ()),
        _ => {
            eprintln!("usage: cargo xtask <demo|test|bench|plugins>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root());
    cmd
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup: is the Rust toolchain installed with rustup?")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

fn host_triple() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host triple")
}

/// Builds every plugin; returns the release directory.
fn build_plugins() -> anyhow::Result<PathBuf> {
    ensure_wasm_target()?;
    let plugins = root().join("plugins");
    run(cargo()
        .current_dir(&plugins)
        .args(["build", "--release", "--target", WASM_TARGET])
        .env("CARGO_TARGET_DIR", plugins.join("target")))?;
    Ok(plugins.join("target").join(WASM_TARGET).join("release"))
}

fn demo(extra: &[String]) -> anyhow::Result<()> {
    let release = build_plugins()?;
    let installed = root().join("target").join("demo").join("plugins");
    if installed.exists() {
        std::fs::remove_dir_all(&installed)?;
    }
    for name in DEMO_PLUGINS {
        let bundle = installed.join(name);
        std::fs::create_dir_all(&bundle)?;
        let crate_dir = root().join("plugins").join("examples").join(name);
        std::fs::copy(crate_dir.join("plugin.toml"), bundle.join("plugin.toml"))?;
        std::fs::copy(
            release.join(format!("{}.wasm", name.replace('-', "_"))),
            bundle.join(format!("{name}.wasm")),
        )?;
    }
    eprintln!(
        "\nCartridge demo store: {} plugins installed in {}; admin token `demo-admin`.\n\
         Once it listens on 127.0.0.1:8080, shop with the curl commands in README.md, e.g.\n  \
         curl -s localhost:8080/store/products\n  \
         curl -s localhost:8080/admin/plugins -H 'authorization: Bearer demo-admin'\n",
        DEMO_PLUGINS.len(),
        installed.display(),
    );
    run(cargo()
        .args(["run", "--release", "-p", "cartridge-host", "--"])
        .args([
            "serve",
            "--demo",
            "--admin-token",
            "demo-admin",
            "--plugins-dir",
        ])
        .arg(&installed)
        .args(["--data-dir"])
        .arg(root().join("target").join("demo").join("data"))
        .args(extra))
}

fn test() -> anyhow::Result<()> {
    build_plugins()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo()
        .current_dir(root().join("plugins"))
        .args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["test", "--workspace", "--all-targets"]))?;
    run(cargo().args(["test", "--workspace", "--doc"]))?;
    // The checkout benchmark's native comparison, in its smoke run: the example plugins'
    // source compiled into the host must build, and decide exactly as their components do.
    run(cargo().args([
        "test",
        "-p",
        "cartridge-host",
        "--features",
        "native-rules",
        "--bench",
        "checkout",
    ]))?;
    // The plugins' own unit tests run natively: they test business logic, not the sandbox.
    run(cargo()
        .current_dir(root().join("plugins"))
        .args(["test", "--target", &host_triple()?])
        .env("CARGO_TARGET_DIR", root().join("plugins").join("target")))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args([
        "clippy",
        "-p",
        "cartridge-host",
        "--features",
        "native-rules",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .current_dir(root().join("plugins"))
        .args(["clippy", "--release", "--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", root().join("plugins").join("target")))?;
    Ok(())
}

fn bench(extra: &[String]) -> anyhow::Result<()> {
    build_plugins()?;
    run(cargo()
        .args(["bench", "-p", "cartridge-host", "--bench", "hooks", "--"])
        .args(extra))?;
    // SQLite, and PostgreSQL too when the test server is configured.
    run(cargo()
        .args(["bench", "-p", "cartridge-host", "--bench", "registry", "--"])
        .args(extra))?;
    // Checkout with the plugins as components and, in the same run, the same plugins' source
    // compiled natively.
    let checkout = [
        "bench",
        "-p",
        "cartridge-host",
        "--features",
        "native-rules",
        "--bench",
        "checkout",
        "--",
    ];
    run(cargo()
        .args(checkout)
        .args(extra)
        .env_remove("CARTRIDGE_BENCH_DATABASE_URL"))?;
    // The same on PostgreSQL when the test server is configured.
    if let Ok(url) = std::env::var("CARTRIDGE_TEST_DATABASE_URL") {
        run(cargo()
            .args(checkout)
            .args(extra)
            .env("CARTRIDGE_BENCH_DATABASE_URL", url))?;
    }
    Ok(())
}
