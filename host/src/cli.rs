//! The `cartridge` command line.
//!
//! - `cartridge serve`: run the host with the plugins of a directory loaded.
//! - `cartridge plugin new <name> --hook <kind>`: scaffold a plugin crate that builds.
//! - `cartridge plugin build [dir]`: build a plugin crate into an installable bundle
//!   (`plugin.toml` + `.wasm`).
//! - `cartridge plugin run <file.wasm> --hook <kind> --input <file.json>`: run one hook call
//!   and report the output, the instructions, memory and time it used, and the limits in force.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::plugin::{
    HookError, HookKind, Manifest, OUTPUT_LIMIT_BYTES, Plugin, Runtime, RuntimeConfig,
};

/// Cartridge: a commerce host whose business rules are WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "cartridge", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host.
    Serve(ServeArgs),
    /// Write, build and try plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Apply pending database migrations and exit (`serve` also applies them at start-up).
    Migrate(DatabaseArgs),
}

/// Which database to use.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://path` or `postgres://user@host/db`. Default: a SQLite file in the data
    /// directory.
    #[arg(long, env = "CARTRIDGE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the host keeps its data (the SQLite file, the compiled-plugin cache).
    #[arg(long, env = "CARTRIDGE_DATA_DIR", default_value = ".cartridge")]
    pub data_dir: PathBuf,
    /// PostgreSQL: connections this host opens at most. Default: twice its cores, plus one, at
    /// most 16 — more connections than the database has cores to run them only queue inside it.
    /// From 2 to 1024; anything else is refused at start-up rather than quietly changed.
    #[arg(long, env = "CARTRIDGE_DATABASE_POOL_SIZE",
          value_parser = clap::value_parser!(u32).range(2..=1024))]
    pub database_pool_size: Option<u32>,
}

impl DatabaseArgs {
    /// The database URL in force.
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("cartridge.db").display()))
    }

    /// Connects to the database in force.
    pub async fn connect(&self) -> anyhow::Result<crate::db::Db> {
        let pool = self
            .database_pool_size
            .unwrap_or_else(crate::db::default_pool_size);
        crate::db::Db::connect_with(&self.url(), pool).await
    }
}

/// Options of `cartridge serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CARTRIDGE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Directory of plugin bundles: one sub-directory per plugin with `plugin.toml` and its
    /// `.wasm`.
    #[arg(
        long,
        env = "CARTRIDGE_PLUGINS_DIR",
        default_value = "plugins-installed"
    )]
    pub plugins_dir: PathBuf,
    /// The database and the data directory.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A bootstrap admin bearer token (stored hashed). Without one, a token is generated and
    /// printed at start-up.
    #[arg(long, env = "CARTRIDGE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A scrape-only bearer token for `/metrics`, for a Prometheus server that should hold no
    /// admin token. Without one, `/metrics` answers admin tokens only.
    #[arg(long, env = "CARTRIDGE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Seed the demo store (catalog, two stock locations, stock, two shipping methods) into an
    /// empty catalog.
    #[arg(long)]
    pub demo: bool,
    /// Plugin calls running at once, across all plugins: the slots of the instance pool (up
    /// to 64 more hold idle instances). A call that finds every slot busy waits for one, for
    /// at most its deadline. Each slot reserves address space (not memory) for full-size
    /// linear memories; 1 to 4096.
    #[arg(long, env = "CARTRIDGE_MAX_INSTANCES",
          default_value_t = crate::plugin::DEFAULT_MAX_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_instances: u32,
    /// Give every plugin call a new instance instead of one an earlier call of the same
    /// plugin left idle (slower; for operators who want no plugin memory to outlive a call).
    #[arg(long, env = "CARTRIDGE_FRESH_INSTANCES",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub fresh_instances: bool,
    /// How often this host checks the registry for changes made through other hosts, in ms.
    #[arg(long, env = "CARTRIDGE_REGISTRY_POLL_MS", default_value_t = 100)]
    pub registry_poll_ms: u64,
    /// Log one hook call in this many into the call log that shadow runs replay (0: none).
    #[arg(long, env = "CARTRIDGE_CALL_LOG_EVERY", default_value_t = 10)]
    pub call_log_every: u64,
    /// Switch a plugin off after this many crashes in a row (0: never).
    #[arg(long, env = "CARTRIDGE_CRASH_LOOP_AFTER", default_value_t = 20)]
    pub crash_loop_after: u32,
    /// A directory plugin secret files may be in, besides `/run/secrets` and
    /// `<data-dir>/secrets` (repeatable).
    #[arg(long = "secrets-dir", env = "CARTRIDGE_SECRETS_DIR")]
    pub secrets_dirs: Vec<PathBuf>,
    /// Benchmark only: serve the example plugins by their source compiled into this binary
    /// instead of their components (same inputs, validation and policies). Needs a build with
    /// the `native-rules` feature.
    #[arg(long, hide = true)]
    pub native_rules: bool,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Scaffold a plugin crate.
    New {
        /// The plugin's name: lower-case letters, digits and dashes.
        name: String,
        /// The hook it serves.
        #[arg(long)]
        hook: HookKind,
        /// Directory to create the crate in (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the SDK at this path instead of the one this host was built with.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
    /// Build a plugin crate for wasm32-wasip2 and bundle it with its manifest.
    Build {
        /// The plugin crate (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to put the bundle (default: <dir>/target/cartridge/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one hook call on a JSON input and report what it used.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The component.
    wasm: PathBuf,
    /// The hook to call. Defaults to the manifest's.
    #[arg(long)]
    hook: Option<HookKind>,
    /// The input, as JSON (a cart, a checkout, a personalization context, or a payment step
    /// `{"step": "authorize", "request": {...}}`). `-` reads standard input.
    #[arg(long, required_unless_present = "replay")]
    input: Option<PathBuf>,
    /// Shadow run: instead of one input, replay the last N logged inputs of the plugin of the
    /// same name from the registry (`--database-url`), next to its active version, and report
    /// where the answers differ.
    #[arg(long, value_name = "N", conflicts_with = "input")]
    replay: Option<u32>,
    /// The registry to replay from.
    #[command(flatten)]
    database: DatabaseArgs,
    /// The manifest (default: plugin.toml beside the component, if there is one).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Override the instruction budget.
    #[arg(long)]
    fuel: Option<u64>,
    /// Override the memory cap, in MiB.
    #[arg(long)]
    memory_mib: Option<u32>,
    /// Override the deadline, in milliseconds.
    #[arg(long)]
    deadline_ms: Option<u32>,
    /// Print one JSON document instead of a report.
    #[arg(long)]
    json: bool,
}

/// Runs the command line; the process exits with what this returns.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => crate::server::serve(args).await.map(|()| ExitCode::SUCCESS),
        Command::Plugin(PluginCommand::New {
            name,
            hook,
            dir,
            sdk_path,
        }) => scaffold(&name, hook, dir, sdk_path).map(|()| ExitCode::SUCCESS),
        Command::Plugin(PluginCommand::Build { dir, out }) => {
            build(&dir, out.as_deref()).map(|bundle| {
                println!("{}", bundle.display());
                ExitCode::SUCCESS
            })
        }
        Command::Plugin(PluginCommand::Run(args)) => run_hook(args).await,
        Command::Migrate(args) => migrate(&args).await.map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens the database (creating the data directory for SQLite) and applies migrations.
pub async fn open_database(args: &DatabaseArgs) -> anyhow::Result<crate::db::Db> {
    if args.database_url.is_none() {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
    }
    let db = args.connect().await?;
    db.migrate().await?;
    Ok(db)
}

async fn migrate(args: &DatabaseArgs) -> anyhow::Result<()> {
    open_database(args).await?;
    eprintln!("migrations applied");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// plugin new

const SDK_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

fn scaffold(
    name: &str,
    hook: HookKind,
    dir: Option<PathBuf>,
    sdk_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let manifest_text = format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\nhook = \"{hook}\"\ncontract = \"{}\"\ndescription = \"\"\n",
        crate::plugin::manifest::SUPPORTED_CONTRACTS
            .last()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    // Refuse names the host would refuse, before writing anything.
    Manifest::parse(&manifest_text)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let sdk = match sdk_path {
        Some(path) => format!("{{ path = {:?} }}", path.display().to_string()),
        None => match std::fs::canonicalize(SDK_DIR) {
            Ok(path) => format!("{{ path = {:?} }}", path.display().to_string()),
            Err(_) => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
        },
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::create_dir_all(dir.join(".cargo"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\ncartridge-sdk = {sdk}\n\n\
             [profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\nstrip = true\npanic = \"abort\"\n\n\
             # A plugin is its own workspace unless you add it to one.\n[workspace]\n"
        ),
    )?;
    std::fs::write(
        dir.join(".cargo/config.toml"),
        "[build]\ntarget = \"wasm32-wasip2\"\n\n[target.wasm32-wasip2]\nrustflags = [\"-C\", \"link-arg=-zstack-size=131072\"]\n",
    )?;
    std::fs::write(dir.join("plugin.toml"), manifest_text)?;
    std::fs::write(dir.join("src/lib.rs"), template(hook))?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    eprintln!(
        "created {hook} plugin {name} in {}\n  build:  cartridge plugin build {}\n  test:   cargo test --target $(rustc -vV | sed -n 's/host: //p')",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn template(hook: HookKind) -> &'static str {
    match hook {
        HookKind::Pricing => include_str!("templates/pricing.rs"),
        HookKind::Fraud => include_str!("templates/fraud.rs"),
        HookKind::Personalization => include_str!("templates/personalization.rs"),
        HookKind::Payment => include_str!("templates/payment.rs"),
    }
}

// ---------------------------------------------------------------------------------------------
// plugin build

/// Builds the plugin crate in `dir` for wasm32-wasip2 (release) and writes a bundle directory
/// with its `plugin.toml` and `<name>.wasm`. Returns the bundle's path.
pub fn build(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let manifest_path = dir.join("plugin.toml");
    let manifest = Manifest::parse(
        &std::fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build failed");
    }
    let mut wasm = None;
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && let Some(files) = message["filenames"].as_array()
        {
            for file in files.iter().filter_map(|f| f.as_str()) {
                if file.ends_with(".wasm") {
                    wasm = Some(PathBuf::from(file));
                }
            }
        }
    }
    let wasm = wasm.context("cargo built no .wasm: is the crate a cdylib?")?;
    let bundle = match out {
        Some(out) => out.to_owned(),
        None => dir.join("target/cartridge").join(&manifest.name),
    };
    let target = bundle.join(format!("{}.wasm", manifest.name));
    write_bundle(
        &bundle,
        &std::fs::read_to_string(&manifest_path)?,
        &target,
        &std::fs::read(&wasm)?,
    )?;
    eprintln!(
        "built {} ({} bytes) -> {}",
        manifest.id(),
        std::fs::metadata(&target)?.len(),
        bundle.display()
    );
    Ok(bundle)
}

/// Writes a bundle: the component to `component`, then `plugin.toml` naming the component's
/// SHA-256, each under a temporary name renamed into place. A plugins directory watching
/// `bundle` never reads a manifest beside a component it was not written for, and if it
/// reads the old manifest beside the new component, the version is refused (the same version
/// with other bytes) and read again once the manifest is in place.
fn write_bundle(
    bundle: &Path,
    manifest: &str,
    component: &Path,
    wasm: &[u8],
) -> anyhow::Result<()> {
    use sha2::Digest as _;
    crate::plugin::write_atomically(bundle, component, wasm)?;
    let digest = hex::encode(sha2::Sha256::digest(wasm));
    let mut pinned =
        format!("component-sha256 = \"{digest}\"  # written by `cartridge plugin build`\n");
    // An older pin goes; only top-level keys, before the first table, are looked at.
    let mut top_level = true;
    for line in manifest.lines() {
        top_level &= !line.trim_start().starts_with('[');
        if !(top_level && line.trim_start().starts_with("component-sha256")) {
            pinned.push_str(line);
            pinned.push('\n');
        }
    }
    crate::plugin::write_atomically(bundle, &bundle.join("plugin.toml"), pinned.as_bytes())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// plugin run

async fn run_hook(args: RunArgs) -> anyhow::Result<ExitCode> {
    let wasm =
        std::fs::read(&args.wasm).with_context(|| format!("reading {}", args.wasm.display()))?;
    let manifest_path = args.manifest.clone().or_else(|| {
        let beside = args.wasm.with_file_name("plugin.toml");
        beside.is_file().then_some(beside)
    });
    let mut manifest = match &manifest_path {
        Some(path) => Manifest::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => {
            let hook = args
                .hook
                .context("no plugin.toml beside the component: pass --hook or --manifest")?;
            let stem = args
                .wasm
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("plugin")
                .to_ascii_lowercase()
                .replace('_', "-");
            Manifest::parse(&format!(
                "name = \"{stem}\"\nversion = \"0.0.0\"\nhook = \"{hook}\"\ncontract = \"0.1.0\"\n"
            ))?
        }
    };
    if let Some(hook) = args.hook
        && hook != manifest.hook
    {
        bail!("--hook {hook} but the manifest says {}", manifest.hook);
    }
    if let Some(fuel) = args.fuel {
        manifest.limits.fuel = Some(fuel);
    }
    if let Some(memory) = args.memory_mib {
        manifest.limits.memory_mib = memory;
    }
    if let Some(deadline) = args.deadline_ms {
        manifest.limits.deadline_ms = deadline;
    }
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        ..RuntimeConfig::default()
    })?;
    let plugin = runtime
        .load(manifest, &wasm)
        .map_err(|e| anyhow::anyhow!("[{}] {e}", e.code()))?;
    if let Some(last) = args.replay {
        return replay(runtime, plugin, &args.database, last, args.json).await;
    }
    let input = match args.input.as_deref() {
        Some(path) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text
        }
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => bail!("--input or --replay is required"),
    };
    let input: serde_json::Value = serde_json::from_str(&input)
        .map_err(|e| anyhow::anyhow!("the input is not valid JSON: {e}"))?;
    let outcome = match crate::hooks::invoke(&plugin, input).await {
        Ok(invocation) => Ok(invocation),
        Err(crate::hooks::InvokeError::Hook(error)) => Err(error),
        Err(bad @ crate::hooks::InvokeError::BadInput { .. }) => bail!("{bad}"),
    };
    print_outcome(&plugin, outcome, args.json)
}

/// `plugin run --replay N`: the candidate against the registry's active version on the last N
/// logged inputs. Exits 1 when any answer differs.
async fn replay(
    runtime: Runtime,
    candidate: Plugin,
    database: &DatabaseArgs,
    last: u32,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let db = database.connect().await?;
    let runtime = std::sync::Arc::new(runtime);
    let name = candidate.manifest().name.clone();
    let active = crate::registry::load_stored(
        &db,
        &runtime,
        &name,
        None,
        &crate::plugin::SecretPolicy::default(),
    )
    .await?;
    let report = crate::registry::replay::replay(&db, &candidate, active.as_ref(), last).await?;
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(out, "candidate    {}", report.candidate)?;
        writeln!(out, "baseline     {}", report.baseline)?;
        writeln!(
            out,
            "replayed     {} inputs: {} identical, {} different ({} candidate errors, {} logged inputs no longer valid)",
            report.compared,
            report.identical,
            report.differed,
            report.candidate_errors,
            report.skipped
        )?;
        for d in &report.differences {
            writeln!(out, "\ncall {} (at {}):", d.call_id, d.at)?;
            writeln!(out, "  baseline   {}", serde_json::to_string(&d.baseline)?)?;
            writeln!(out, "  candidate  {}", serde_json::to_string(&d.candidate)?)?;
        }
    }
    Ok(if report.differed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_outcome(
    plugin: &Plugin,
    outcome: Result<crate::hooks::Invocation, HookError>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let limits = plugin.manifest().limits;
    let limits_json = json!({
        "fuel": limits.fuel,
        "memory_bytes": limits.memory_bytes(),
        "deadline_ms": limits.deadline_ms,
        "output_bytes": OUTPUT_LIMIT_BYTES,
    });
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(report) => {
            if as_json {
                let doc = json!({
                    "ok": true,
                    "plugin": plugin.reference(),
                    "output": report.output,
                    "priced": report.priced,
                    "stats": report.stats,
                    "limits": limits_json,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                let s = &report.stats;
                writeln!(out, "plugin       {}", plugin.reference())?;
                writeln!(
                    out,
                    "output\n{}",
                    serde_json::to_string_pretty(&report.output)?
                )?;
                if let Some(priced) = &report.priced {
                    writeln!(
                        out,
                        "priced cart\n{}",
                        serde_json::to_string_pretty(priced)?
                    )?;
                }
                writeln!(
                    out,
                    "instructions {} / {}",
                    s.fuel_consumed
                        .map_or("not counted".to_owned(), |f| f.to_string()),
                    limits
                        .fuel
                        .map_or("unlimited".to_owned(), |f| f.to_string())
                )?;
                writeln!(
                    out,
                    "memory       {} / {} bytes (peak linear memory)",
                    s.peak_memory_bytes,
                    limits.memory_bytes()
                )?;
                writeln!(
                    out,
                    "time         {} µs / {} ms deadline",
                    s.duration.as_micros(),
                    limits.deadline_ms
                )?;
                writeln!(
                    out,
                    "output size  {} / {OUTPUT_LIMIT_BYTES} bytes",
                    s.output_bytes
                )?;
                for line in &s.logs {
                    writeln!(out, "log [{}]  {}", line.level, line.message)?;
                }
                if s.logs_dropped > 0 {
                    writeln!(
                        out,
                        "log          {} lines dropped past the cap",
                        s.logs_dropped
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            if as_json {
                let doc = json!({
                    "ok": false,
                    "plugin": plugin.reference(),
                    "error": { "code": error.code(), "message": error.kind.to_string() },
                    "limits": limits_json,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            } else {
                eprintln!("error[{}]: {error}", error.code());
                eprintln!(
                    "limits: fuel {}, memory {} bytes, deadline {} ms",
                    limits
                        .fuel
                        .map_or("unlimited".to_owned(), |f| f.to_string()),
                    limits.memory_bytes(),
                    limits.deadline_ms
                );
            }
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_size(value: &str) -> Result<Option<u32>, clap::Error> {
        let arg = format!("--database-pool-size={value}");
        let cli = Cli::try_parse_from(["cartridge", "migrate", arg.as_str()])?;
        match cli.command {
            Command::Migrate(db) => Ok(db.database_pool_size),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn max_instances(args: &[&str]) -> Result<u32, clap::Error> {
        let cli = Cli::try_parse_from(["cartridge", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(serve) => Ok(serve.max_instances),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn instances_are_reused_unless_the_operator_asks_for_fresh_ones() {
        let fresh = |args: &[&str]| {
            let cli = Cli::try_parse_from(["cartridge", "serve"].iter().chain(args))?;
            match cli.command {
                Command::Serve(serve) => Ok::<_, clap::Error>(serve.fresh_instances),
                other => panic!("parsed as {other:?}"),
            }
        };
        assert_eq!(fresh(&[]).ok(), Some(false));
        assert_eq!(fresh(&["--fresh-instances"]).ok(), Some(true));
    }

    #[test]
    fn the_instance_pool_is_sized_from_one_to_4096_slots() {
        assert_eq!(
            max_instances(&[]).ok(),
            Some(crate::plugin::DEFAULT_MAX_INSTANCES)
        );
        assert_eq!(max_instances(&["--max-instances=1"]).ok(), Some(1));
        assert_eq!(max_instances(&["--max-instances=4096"]).ok(), Some(4096));
        for bad in ["0", "4097", "-1", "lots"] {
            let arg = format!("--max-instances={bad}");
            let error = max_instances(&[arg.as_str()]).expect_err(bad);
            assert!(
                error.to_string().contains("--max-instances"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn pool_sizes_outside_two_to_1024_are_refused_at_start() {
        assert_eq!(pool_size("2").ok(), Some(Some(2)));
        assert_eq!(pool_size("1024").ok(), Some(Some(1024)));
        for bad in ["0", "1", "1025", "-3", "many"] {
            let error = pool_size(bad).expect_err(bad);
            assert!(
                error.to_string().contains("--database-pool-size"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_built_bundle_pins_its_component_and_replaces_an_older_pin() {
        use sha2::Digest as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("tiered-discount");
        let component = bundle.join("tiered-discount.wasm");
        let manifest = "component-sha256 = \"00\"\nname = \"tiered-discount\"\n\
                        version = \"1.0.0\"\nhook = \"pricing\"\ncontract = \"0.1.0\"\n\
                        [config]\ncomponent-sha256-note = \"kept\"\n";
        write_bundle(&bundle, manifest, &component, b"\0asm bytes").expect("written");
        assert_eq!(
            std::fs::read(&component).expect("component"),
            b"\0asm bytes"
        );
        let written = std::fs::read_to_string(bundle.join("plugin.toml")).expect("manifest");
        let parsed = Manifest::parse(&written).expect("a valid manifest");
        assert_eq!(
            parsed.component_sha256,
            Some(hex::encode(sha2::Sha256::digest(b"\0asm bytes")))
        );
        assert_eq!(
            written.matches("component-sha256 =").count(),
            1,
            "{written}"
        );
        // A key of that name in a table is the plugin's own, and stays.
        assert_eq!(
            parsed
                .config
                .get("component-sha256-note")
                .map(String::as_str),
            Some("kept")
        );
        // Nothing else is left in the bundle: no temporary file.
        assert_eq!(std::fs::read_dir(&bundle).expect("bundle").count(), 2);
    }
}
