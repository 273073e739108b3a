//! Test only: answers with about 1 MB of operations.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, DiscountValue, Operation, Pricing};

struct HugeOutput;

impl Pricing for HugeOutput {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let line = cart.lines.first().map(|l| l.id.clone()).unwrap_or_default();
        let label = "x".repeat(100);
        Ok((0..5_000)
            .map(|_| Operation::line_discount(&line, DiscountValue::BasisPoints(1), label.clone()))
            .collect())
    }
}

cartridge_sdk::export_plugin!(pricing, HugeOutput);
