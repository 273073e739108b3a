//! Test only: panics with a recognisable message.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};

struct Panicker;

impl Pricing for Panicker {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        panic!("panicker gave up on cart {}", cart.id);
    }
}

cartridge_sdk::export_plugin!(pricing, Panicker);
