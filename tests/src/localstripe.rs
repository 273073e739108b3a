//! localstripe (PyPI): a fake but stateful Stripe server, for tests that speak Stripe's wire
//! format over real HTTP.
//!
//! `.ci/run` installs it into a Python venv ([`venv_dir`]); [`LocalStripe::start`] runs one
//! server per test on a free port bound to 127.0.0.1 and stops it when dropped. Without the
//! venv, a test that needs it fails on CI (`CI` set) and is skipped elsewhere — with a warning
//! on stderr that cannot be missed, because a skipped payment test proves nothing.
//!
//! Each server keeps its state in memory only: localstripe itself listens on every interface
//! and pickles its store to a fixed `/tmp/localstripe.pickle` after each write, which parallel
//! tests would share, so it is started through a few lines of Python that bind to loopback and
//! turn the pickling off (localstripe is pinned in `.ci/run` for that reason).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Overrides where the venv is.
pub const VENV_VAR: &str = "CARTRIDGE_LOCALSTRIPE_VENV";

/// The secret key localstripe accepts: any `sk_…`.
pub const SECRET_KEY: &str = "sk_test_cartridge";

/// How long a server may take to answer after it starts.
const STARTUP: Duration = Duration::from_secs(30);

/// Binds loopback only and keeps the store in memory; then serves on the port in `argv[1]`.
const LAUNCHER: &str = r#"
import sys
from aiohttp import web
import localstripe.resources as resources
resources.Store.dump_to_disk = lambda self: None
from localstripe.server import app
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"#;

/// The venv `.ci/run` creates: `$CARTRIDGE_LOCALSTRIPE_VENV`, or
/// `$HOME/.cache/cartridge/localstripe-venv`.
pub fn venv_dir() -> PathBuf {
    crate::venv(VENV_VAR, "localstripe-venv")
}

/// A running localstripe server, stopped on drop.
#[derive(Debug)]
pub struct LocalStripe {
    child: Child,
    url: String,
    log: tempfile::NamedTempFile,
}

impl LocalStripe {
    /// Starts a server and waits until it answers. `None` — after a loud warning — when the
    /// venv is missing and `CI` is not set; panics when it is missing on CI or does not start.
    pub fn start() -> Option<Self> {
        let python = venv_dir().join("bin").join("python");
        let installed = python.is_file()
            && Command::new(&python)
                .args(["-c", "import localstripe"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !installed {
            let why = format!(
                "localstripe is not installed in {} (run .ci/run, or set {VENV_VAR})",
                venv_dir().display()
            );
            crate::skipping("localstripe", &why);
            return None;
        }
        // A free port can be taken between finding it and the server binding it: try again.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("log file: {e}"));
            let stderr = log
                .reopen()
                .unwrap_or_else(|e| panic!("reopening the log: {e}"));
            let child = Command::new(&python)
                .args(["-c", LAUNCHER, &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
            let mut server = LocalStripe {
                child,
                url: format!("http://127.0.0.1:{port}"),
                log,
            };
            if server.wait_until_ready(port) {
                return Some(server);
            }
            last_log = server.log_text();
        }
        panic!("localstripe did not start; its last output:\n{last_log}");
    }

    /// The base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Whether the server answers HTTP on `port` before it exits or [`STARTUP`] runs out.
    fn wait_until_ready(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if answers(port) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// Whether an authenticated `GET /v1/customers` gets an HTTP 200.
fn answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!(
        "GET /v1/customers HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Authorization: Bearer {SECRET_KEY}\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
