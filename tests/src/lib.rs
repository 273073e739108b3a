//! # cartridge-tests
//!
//! End-to-end tests of the host live in `tests/tests/*.rs`; this library is what they share:
//! the plugins of `plugins/` (examples, legacy and hostile ones), built for wasm32-wasip2 once per test
//! process with the same cargo that runs the tests.
//!
//! It depends on nothing of the host, so the host's own integration tests (the CLI's) can use
//! it too. [`localstripe`] runs a fake Stripe server for the payment tests; [`schemathesis`]
//! runs an OpenAPI fuzzer against a live app.

pub mod localstripe;
pub mod schemathesis;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Prints the warnings of the database layer — a lease of the SQLite writer waited for or
/// held over a second, a pooled connection slow to come — to the test process's stderr, once
/// per process, so that a test that fails on a slow answer shows where the time went. Other
/// events stay silent: many tests break plugins on purpose, and their warnings are expected.
pub fn log_slow_database_waits() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "cartridge_host::db=warn,sqlx::pool=warn",
        ))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The plugins workspace.
pub fn plugins_root() -> PathBuf {
    repo_root().join("plugins")
}

/// Where the plugins workspace puts its release build.
pub fn plugins_target_dir() -> PathBuf {
    plugins_root().join("target")
}

/// The built plugins.
#[derive(Debug)]
pub struct BuiltPlugins {
    release_dir: PathBuf,
}

impl BuiltPlugins {
    /// The component of plugin `name` (its crate name, e.g. `tiered-discount`).
    pub fn wasm(&self, name: &str) -> PathBuf {
        self.release_dir
            .join(format!("{}.wasm", name.replace('-', "_")))
    }

    /// The component's bytes.
    pub fn wasm_bytes(&self, name: &str) -> Vec<u8> {
        let path = self.wasm(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// The crate directory of plugin `name`: `plugins/examples/<name>`,
    /// `plugins/legacy/<name>` or `plugins/hostile/<name>`.
    pub fn crate_dir(&self, name: &str) -> PathBuf {
        let root = plugins_root();
        ["examples", "legacy"]
            .into_iter()
            .map(|group| root.join(group).join(name))
            .find(|dir| dir.is_dir())
            .unwrap_or_else(|| root.join("hostile").join(name))
    }

    /// The text of plugin `name`'s `plugin.toml`.
    pub fn manifest_text(&self, name: &str) -> String {
        let path = self.crate_dir(name).join("plugin.toml");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    /// A fixture input of plugin `name` (`fixtures/<file>` in its crate).
    pub fn fixture(&self, name: &str, file: &str) -> PathBuf {
        self.crate_dir(name).join("fixtures").join(file)
    }

    /// Writes an installable bundle of plugin `name` (`plugin.toml` + `<name>.wasm`) into
    /// `dir/<name>` and returns that directory.
    pub fn bundle_into(&self, name: &str, dir: &Path) -> PathBuf {
        let bundle = dir.join(name);
        std::fs::create_dir_all(&bundle).unwrap_or_else(|e| panic!("creating bundle: {e}"));
        std::fs::write(bundle.join("plugin.toml"), self.manifest_text(name))
            .unwrap_or_else(|e| panic!("writing manifest: {e}"));
        std::fs::copy(self.wasm(name), bundle.join(format!("{name}.wasm")))
            .unwrap_or_else(|e| panic!("copying component: {e}"));
        bundle
    }
}

/// `manifest` (a `plugin.toml`) with its deadline set to `ms`: for the tests that load a host
/// to check stock, idempotency or versions, where the examples' 20–50 ms deadlines would judge
/// the loaded machine's speed instead. Panics if the manifest has no `deadline-ms` line.
pub fn with_deadline(manifest: &str, ms: u32) -> String {
    let mut found = false;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.lines() {
        if line.starts_with("deadline-ms") {
            found = true;
            out.push_str(&format!("deadline-ms = {ms}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(found, "no deadline-ms in:\n{manifest}");
    out
}

/// Builds every plugin in `plugins/` (release, wasm32-wasip2) the first time it is called in
/// this process and returns where they are. Panics with cargo's output if the build fails:
/// a test cannot run without its plugins.
pub fn plugins() -> &'static BuiltPlugins {
    static BUILT: OnceLock<BuiltPlugins> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let output = Command::new(cargo)
            .current_dir(plugins_root())
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .env("CARGO_TARGET_DIR", plugins_target_dir())
            // The outer build's flags are for the host, not for wasm.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET")
            .output()
            .unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
        assert!(
            output.status.success(),
            "building the plugins failed (is the wasm32-wasip2 target installed? \
             `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        BuiltPlugins {
            release_dir: plugins_target_dir().join("wasm32-wasip2").join("release"),
        }
    })
}

/// The environment variable that points the tests at a PostgreSQL server (a URL whose user may
/// create databases). Without it, database tests run on SQLite only.
pub const POSTGRES_URL_VAR: &str = "CARTRIDGE_TEST_DATABASE_URL";

/// A fresh, empty database for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its URL.
    pub url: String,
    /// `sqlite` or `postgres`, for messages.
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// Drops a PostgreSQL test database now (SQLite files go with their temporary directory).
    /// Dropping a `TestDatabase` does the same, except while its test is panicking: a failing
    /// test leaves its database for inspection.
    pub async fn drop_database(mut self) {
        if let Some((admin_url, name)) = self.postgres.take() {
            drop_postgres(&admin_url, &name).await;
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!("note: left PostgreSQL database {name} for inspection");
            return;
        }
        // Not inside the test's runtime: its worker may be the only one, and this blocks.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(drop_postgres(&admin_url, &name)),
                Err(e) => eprintln!("note: cannot drop PostgreSQL database {name}: {e}"),
            }
        });
        let _ = dropper.join();
    }
}

async fn drop_postgres(admin_url: &str, name: &str) {
    use sqlx::Connection;
    match sqlx::PgConnection::connect(admin_url).await {
        Ok(mut conn) => {
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut conn)
                .await
            {
                eprintln!("note: cannot drop PostgreSQL database {name}: {e}");
            }
        }
        Err(e) => eprintln!("note: cannot drop PostgreSQL database {name}: {e}"),
    }
}

/// One fresh database per backend under test: always SQLite (a file in a temporary
/// directory), and PostgreSQL when [`POSTGRES_URL_VAR`] is set. On CI it must be set: a test
/// that silently skipped PostgreSQL would prove nothing about it.
pub async fn test_databases() -> Vec<TestDatabase> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut databases = vec![TestDatabase {
        url: format!("sqlite://{}", dir.path().join("cartridge.db").display()),
        backend: "sqlite",
        _dir: Some(dir),
        postgres: None,
    }];
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(admin_url) => databases.push(fresh_postgres(&admin_url).await),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{POSTGRES_URL_VAR} must be set on CI: the PostgreSQL tests would not run"
            );
            eprintln!("note: {POSTGRES_URL_VAR} is not set; testing on SQLite only");
        }
    }
    databases
}

async fn fresh_postgres(admin_url: &str) -> TestDatabase {
    use sqlx::Connection;
    let name = format!("cartridge_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {admin_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(admin_url);
    TestDatabase {
        url: format!("{base}/{name}"),
        backend: "postgres",
        _dir: None,
        postgres: Some((admin_url.to_owned(), name)),
    }
}

/// A test cannot run because `tool` (a Python package `.ci/run` installs) is missing: fails
/// on CI (`CI` set); elsewhere warns on stderr, loudly, and the caller skips the test.
pub fn skipping(tool: &str, why: &str) {
    use std::io::Write;
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}: on CI the {tool} tests must run"
    );
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and this
    // must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n\
         ##########################################################################\n\
         WARNING: SKIPPING a test against {tool}: {why}.\n\
         It proved NOTHING. CI runs it; run .ci/run once to run it here.\n\
         ##########################################################################\n"
    );
}

/// A Python venv `.ci/run` creates for a tool: `$<var>`, or `$HOME/.cache/cartridge/<name>`
/// (outside the repository, shared by worktrees).
pub fn venv(var: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("cartridge").join(name)
}
