//! Test only: never returns.
//!
//! It answers the registry's smoke call (cart `smoke-cart`) normally, so that it can be
//! installed like a plugin with a latent bug and fail on real traffic.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};

struct LoopForever;

impl Pricing for LoopForever {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        if cart.id == "smoke-cart" {
            return Ok(Vec::new());
        }
        let mut n: u64 = cart.lines.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

cartridge_sdk::export_plugin!(pricing, LoopForever);
