//! A pricing plugin. The host calls `price` with the cart and applies the operations you
//! return after checking them; you never compute totals.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, DiscountValue, Operation, Pricing};

struct Plugin;

impl Pricing for Plugin {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        // Example: 10 % off the order when the shopper entered WELCOME10.
        if cart.has_code("WELCOME10") {
            return Ok(vec![
                Operation::order_discount(DiscountValue::percent(10), "Welcome: 10 % off")
                    .with_code("WELCOME10"),
            ]);
        }
        Ok(Vec::new())
    }
}

cartridge_sdk::export_plugin!(pricing, Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn cart(codes: &[&str]) -> Cart {
        Cart {
            id: "cart".into(),
            currency: "EUR".into(),
            lines: vec![],
            customer: None,
            coupon_codes: codes.iter().map(|c| c.to_string()).collect(),
            shipping: None,
            now: 0,
        }
    }

    #[test]
    fn the_code_gives_ten_percent_off() {
        assert_eq!(Plugin::price(cart(&["WELCOME10"])).unwrap().len(), 1);
        assert!(Plugin::price(cart(&[])).unwrap().is_empty());
    }
}
