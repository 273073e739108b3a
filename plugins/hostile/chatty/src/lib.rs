//! Test only: logs 200 lines of 100 bytes (20 kB) on every call, then changes nothing.

use cartridge_sdk::pricing::{Cart, Operation, Pricing};
use cartridge_sdk::{PluginError, log};

struct Chatty;

impl Pricing for Chatty {
    fn price(_cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let line = "y".repeat(100);
        for _ in 0..200 {
            log::info(&line);
        }
        Ok(Vec::new())
    }
}

cartridge_sdk::export_plugin!(pricing, Chatty);
