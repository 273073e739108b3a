//! schemathesis (PyPI): a property-based fuzzer driven by an OpenAPI document, run against a
//! live app's `/openapi.json`.
//!
//! `.ci/run` installs it, pinned, into a venv of its own ([`venv_dir`]). [`run`] starts the
//! `st` command line with a fixed seed, so that a failure reproduces, and returns its verdict
//! and its report. Without the venv it fails on CI and skips elsewhere, like localstripe.

use std::path::PathBuf;
use std::process::Command;

/// Overrides where the venv is.
pub const VENV_VAR: &str = "CARTRIDGE_SCHEMATHESIS_VENV";

/// The venv `.ci/run` creates: `$CARTRIDGE_SCHEMATHESIS_VENV`, or
/// `$HOME/.cache/cartridge/schemathesis-venv`.
pub fn venv_dir() -> PathBuf {
    crate::venv(VENV_VAR, "schemathesis-venv")
}

/// The venv's program `name`; `None` when schemathesis is not installed (and this is not CI).
fn installed(name: &str) -> Option<PathBuf> {
    let program = venv_dir().join("bin").join(name);
    if !program.is_file() {
        let why = format!(
            "schemathesis is not installed in {} (run .ci/run, or set {VENV_VAR})",
            venv_dir().display()
        );
        crate::skipping("schemathesis", &why);
        return None;
    }
    Some(program)
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// No check failed and no request errored.
    pub passed: bool,
    /// The command line's report (stdout and stderr).
    pub text: String,
}

/// Runs every phase of schemathesis (examples, coverage, fuzzing, stateful) against the
/// document at `<base>/openapi.json`, sending `headers` with every request, at most
/// `max_examples` generated cases per operation and phase, from `seed`. The checks are all of
/// schemathesis's but one: `positive_data_acceptance`, which counts a 4xx for a body that
/// matches the schema as a failure, while the API refuses such bodies on purpose when they
/// break a rule a schema cannot state (an unknown SKU, a duplicate id, a closed order).
/// `paths`, when given, is a regular expression: only the operations on matching paths run,
/// and not the stateful phase.
/// `None` when schemathesis is not installed (and this is not CI).
pub fn run(
    base: &str,
    headers: &[(&str, &str)],
    paths: Option<&str>,
    seed: u64,
    max_examples: u32,
) -> Option<Report> {
    let st = installed("st")?;
    let mut command = Command::new(&st);
    command
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", &max_examples.to_string()])
        .args(["--seed", &seed.to_string()])
        // One worker: with two, hypothesis (under schemathesis) once failed in its own code
        // ("AST constructor recursion depth mismatch", a race between its threads).
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--suppress-health-check", "all"])
        .args(["--warnings", "off"])
        .arg("--no-color")
        // Its own files (a cache of examples it found) go to a temporary directory.
        .current_dir(std::env::temp_dir());
    if let Some(paths) = paths {
        // The links run between operations a filter may leave out: no stateful phase then.
        command.args(["--include-path-regex", paths]);
        command.args(["--phases", "examples,coverage,fuzzing"]);
    }
    for (name, value) in headers {
        command.args(["--header", &format!("{name}: {value}")]);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", st.display()));
    Some(Report {
        passed: output.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// Checks `instance` against the schema `#/components/schemas/{name}` of the OpenAPI
/// `document`, with the JSON Schema validator schemathesis itself uses (`jsonschema_rs`, in
/// its venv): what a route answered against what the document promises for it. `Err` names
/// each violation; `None` when schemathesis is not installed (and this is not CI).
pub fn validate(
    document: &serde_json::Value,
    name: &str,
    instance: &serde_json::Value,
) -> Option<Result<(), String>> {
    let python = installed("python")?;
    // The document's definitions under a root schema that refers to one of them, so that
    // every `#/components/schemas/…` reference resolves within it.
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": format!("#/components/schemas/{name}"),
        "components": {"schemas": document["components"]["schemas"]},
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (schema_file, instance_file) = (dir.path().join("schema"), dir.path().join("instance"));
    std::fs::write(&schema_file, schema.to_string()).expect("writing the schema");
    std::fs::write(&instance_file, instance.to_string()).expect("writing the instance");
    let output = Command::new(&python)
        .arg("-c")
        .arg(
            "import json, sys, jsonschema_rs\n\
             schema = json.load(open(sys.argv[1]))\n\
             instance = json.load(open(sys.argv[2]))\n\
             errors = [f'{list(e.instance_path)}: {e.message}' for e in\n\
                       jsonschema_rs.Draft202012Validator(schema).iter_errors(instance)]\n\
             print('\\n'.join(errors))\n\
             sys.exit(1 if errors else 0)\n",
        )
        .arg(&schema_file)
        .arg(&instance_file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(if output.status.success() {
        Ok(())
    } else {
        Err(text)
    })
}
