//! Test only: answers with operations the host must refuse. The `mode` configuration value
//! picks which: `above-price` (a discount above the unit price, the default), `unknown-line`,
//! `wrong-currency`, `unentered-code`.

use cartridge_sdk::pricing::{Cart, DiscountValue, Money, Operation, Pricing};
use cartridge_sdk::{PluginError, config};

struct InvalidOutput;

impl Pricing for InvalidOutput {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let Some(line) = cart.lines.first() else {
            return Ok(Vec::new());
        };
        let op = match config("mode").as_deref().unwrap_or("above-price") {
            "unknown-line" => {
                Operation::line_discount("no-such-line", DiscountValue::percent(10), "ghost")
            }
            "wrong-currency" => Operation::line_discount(
                &line.id,
                DiscountValue::Amount(Money::new(1, "XXX")),
                "wrong money",
            ),
            "unentered-code" => Operation::free_shipping("free").with_code("NOBODY-ENTERED-THIS"),
            _ => Operation::line_discount(
                &line.id,
                DiscountValue::Amount(Money::new(
                    line.unit_price.amount + 1,
                    cart.currency.clone(),
                )),
                "more than it costs",
            ),
        };
        Ok(vec![op])
    }
}

cartridge_sdk::export_plugin!(pricing, InvalidOutput);
