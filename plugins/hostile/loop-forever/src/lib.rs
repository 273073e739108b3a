//! Test only: never returns.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};

struct LoopForever;

impl Pricing for LoopForever {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let mut n: u64 = cart.lines.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

cartridge_sdk::export_plugin!(pricing, LoopForever);
