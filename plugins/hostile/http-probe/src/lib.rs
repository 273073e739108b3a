//! Test only: exercises the `http` and `secrets` capabilities as its configuration says, and
//! reports what it got back as a `plugin-error` (`probe`), so that tests can read it.
//!
//! - `url`: GET it and report `status=<status> body=<first 64 bytes>`, or the HTTP error.
//! - `secret`: read that secret, log it (the host must blank it out of the log), and report
//!   its length.
//!
//! Without configuration (the registry's smoke call), or with `answer = "log"`, it answers with
//! no operations and logs the report instead. With `leak = "error"` or `leak = "panic"` it tries
//! to carry the secret's value out in its error or its panic message (the host must blank it).

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};
use cartridge_sdk::{config, http, log, secrets};

struct HttpProbe;

impl Pricing for HttpProbe {
    fn price(_cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let mut report = Vec::new();
        if let Some(name) = config("secret") {
            match secrets::get(&name) {
                Some(value) => {
                    match config("leak").as_deref() {
                        Some("error") => {
                            return Err(PluginError::new(
                                "probe",
                                format!("the secret is {value}"),
                            ));
                        }
                        Some("panic") => panic!("the secret is {value}"),
                        _ => {}
                    }
                    log::info(&format!("the secret is {value}"));
                    report.push(format!("secret-length={}", value.len()));
                }
                None => report.push("secret=none".to_owned()),
            }
        }
        if let Some(url) = config("url") {
            match http::send(&http::Request::get(url).header("x-probe", "1")) {
                Ok(response) => {
                    let body = String::from_utf8_lossy(&response.body);
                    report.push(format!(
                        "status={} body={}",
                        response.status,
                        body.chars().take(64).collect::<String>()
                    ));
                }
                Err(e) => report.push(format!("error={e:?}")),
            }
        }
        if report.is_empty() || config("answer").as_deref() == Some("log") {
            // Answer normally; what happened is in the call's log lines.
            log::info(&report.join(" "));
            return Ok(Vec::new());
        }
        Err(PluginError::new("probe", report.join(" ")))
    }
}

cartridge_sdk::export_plugin!(pricing, HttpProbe);
