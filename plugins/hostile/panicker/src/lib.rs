//! Test only: panics with a recognisable message.
//!
//! It answers the registry's smoke call (cart `smoke-cart`) normally, so that it can be
//! installed like a plugin with a latent bug and fail on real traffic.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};

struct Panicker;

impl Pricing for Panicker {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        if cart.id == "smoke-cart" {
            return Ok(Vec::new());
        }
        panic!("panicker gave up on cart {}", cart.id);
    }
}

cartridge_sdk::export_plugin!(pricing, Panicker);
