//! Test only: tries to leave the sandbox. The `mode` configuration value picks how: `file`
//! (read /etc/passwd), `env` (read an environment variable), `socket` (connect to a TCP port),
//! `dns` (resolve a host name).

use cartridge_sdk::pricing::{Cart, Operation, Pricing};
use cartridge_sdk::{PluginError, config};

struct SandboxEscape;

impl Pricing for SandboxEscape {
    fn price(_cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let mode = config("mode").unwrap_or_default();
        let leaked = match mode.as_str() {
            "file" => std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string()),
            "env" => std::env::var("HOME").map_err(|e| e.to_string()),
            "socket" => std::net::TcpStream::connect("127.0.0.1:5432")
                .map(|_| "connected".to_owned())
                .map_err(|e| e.to_string()),
            "dns" => std::net::ToSocketAddrs::to_socket_addrs("localhost:80")
                .map(|_| "resolved".to_owned())
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown mode {other:?}")),
        };
        // If the host let anything through, say so loudly in the output.
        Err(PluginError::new(
            "escape-attempt-returned",
            match leaked {
                Ok(value) => format!("LEAKED: {value}"),
                Err(e) => format!("the attempt failed inside the plugin: {e}"),
            },
        ))
    }
}

cartridge_sdk::export_plugin!(pricing, SandboxEscape);
