//! Coupon codes and buy-X-get-Y.
//!
//! Four promotions, each switched on by the cart alone:
//!
//! - **Percent code** (`WELCOME10`): 10 % off the order. It is *exclusive*: the host keeps it
//!   only if it is worth more than every other order discount together, so it never stacks
//!   with another plugin's order deals.
//! - **Free-shipping code** (`FREESHIP`): ships for free.
//! - **Fixed code** (`SAVE5`): 5.00 off the order, in the cart's currency, when the cart's
//!   subtotal before discounts is at least 25.00.
//! - **Buy 3 get 1 free** on lines in the `socks` category: for every 4 units across those
//!   lines, one unit is free, always the cheapest units first, spread over as many lines as
//!   needed.
//!
//! Every amount is in minor units of the cart's currency (500 is 5.00 EUR, but 500 JPY).
//! Everything is configurable (an empty code or category switches its promotion off):
//!
//! | key                  | default     | meaning                                     |
//! |----------------------|-------------|---------------------------------------------|
//! | `percent-code`       | `WELCOME10` | code for the percent-off-the-order deal     |
//! | `percent-off`        | `10`        | whole percent, 1 to 100                     |
//! | `free-shipping-code` | `FREESHIP`  | code for free shipping                      |
//! | `fixed-code`         | `SAVE5`     | code for the fixed amount off               |
//! | `fixed-amount`       | `500`       | minor units off the order                   |
//! | `fixed-min-subtotal` | `2500`      | minor units the subtotal must reach         |
//! | `bogo-category`      | `socks`     | category whose lines qualify (any level)    |
//! | `bogo-buy`           | `3`         | units to pay for…                           |
//! | `bogo-get`           | `1`         | …to get this many free                      |
//!
//! Codes a shopper entered that none of these match are left alone: another pricing plugin may
//! answer to them.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, DiscountValue, Operation, Pricing, Stacking};

struct CouponPromotions;

/// Codes and labels must fit the host's 120-character label limit with room to spare.
const MAX_CODE_CHARS: usize = 40;
const MAX_CATEGORY_CHARS: usize = 60;

/// The promotions as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Promotions {
    percent_code: String,
    percent_off: u32,
    free_shipping_code: String,
    fixed_code: String,
    fixed_amount: u64,
    fixed_min_subtotal: u64,
    bogo_category: String,
    bogo_buy: u32,
    bogo_get: u32,
}

impl Promotions {
    /// Reads the configuration from the host.
    fn from_config() -> Result<Self, PluginError> {
        Self::from_lookup(cartridge_sdk::config)
    }

    /// Builds the promotions from any key → value lookup; a missing key takes its default.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, PluginError> {
        let text = |key: &str, default: &str| {
            lookup(key).map_or_else(|| default.to_owned(), |v| v.trim().to_owned())
        };
        let code = |key: &str, default: &str| {
            let code = text(key, default).to_ascii_uppercase();
            if code.chars().count() > MAX_CODE_CHARS || code.chars().any(char::is_whitespace) {
                return Err(invalid(
                    key,
                    &code,
                    "a code of at most 40 characters, no spaces",
                ));
            }
            Ok(code)
        };
        let number = |key: &str, default: u64, min: u64, max: u64| -> Result<u64, PluginError> {
            let Some(value) = lookup(key) else {
                return Ok(default);
            };
            match value.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(invalid(
                    key,
                    &value,
                    &format!("a whole number from {min} to {max}"),
                )),
            }
        };
        let small = |key: &str, default: u32, min: u32, max: u32| -> Result<u32, PluginError> {
            let n = number(key, default.into(), min.into(), max.into())?;
            // In range of u32 by the bounds just checked.
            u32::try_from(n).map_err(|_| invalid(key, &n.to_string(), "a smaller number"))
        };

        let bogo_category = text("bogo-category", "socks");
        if bogo_category.chars().count() > MAX_CATEGORY_CHARS {
            return Err(invalid(
                "bogo-category",
                &bogo_category,
                "a category of at most 60 characters",
            ));
        }
        Ok(Self {
            percent_code: code("percent-code", "WELCOME10")?,
            percent_off: small("percent-off", 10, 1, 100)?,
            free_shipping_code: code("free-shipping-code", "FREESHIP")?,
            fixed_code: code("fixed-code", "SAVE5")?,
            fixed_amount: number("fixed-amount", 500, 1, u64::MAX)?,
            fixed_min_subtotal: number("fixed-min-subtotal", 2500, 0, u64::MAX)?,
            bogo_category,
            bogo_buy: small("bogo-buy", 3, 1, 1000)?,
            bogo_get: small("bogo-get", 1, 1, 1000)?,
        })
    }

    /// The operations for `cart`.
    fn price(&self, cart: &Cart) -> Vec<Operation> {
        let mut operations = self.bogo(cart);
        let entered = |code: &str| !code.is_empty() && cart.has_code(code);

        if entered(&self.percent_code) {
            operations.push(
                Operation::order_discount(
                    DiscountValue::percent(self.percent_off),
                    format!(
                        "{}: {} % off your order",
                        self.percent_code, self.percent_off
                    ),
                )
                .with_code(self.percent_code.as_str())
                .with_stacking(Stacking::Exclusive),
            );
        }

        if entered(&self.fixed_code) {
            let subtotal = cart.subtotal();
            // The host refuses an order discount above the subtotal, so never offer one.
            if subtotal >= self.fixed_min_subtotal && subtotal >= self.fixed_amount {
                operations.push(
                    Operation::order_discount(
                        DiscountValue::amount(self.fixed_amount, cart.currency.as_str()),
                        format!(
                            "{}: {} off your order",
                            self.fixed_code,
                            money(self.fixed_amount, &cart.currency)
                        ),
                    )
                    .with_code(self.fixed_code.as_str()),
                );
            } else {
                cartridge_sdk::log::info(&format!(
                    "{} not applied: subtotal {} is below {}",
                    self.fixed_code,
                    money(subtotal, &cart.currency),
                    money(
                        self.fixed_min_subtotal.max(self.fixed_amount),
                        &cart.currency
                    )
                ));
            }
        }

        if entered(&self.free_shipping_code) {
            operations.push(
                Operation::free_shipping(format!("{}: free shipping", self.free_shipping_code))
                    .with_code(self.free_shipping_code.as_str()),
            );
        }
        operations
    }

    /// Buy X get Y: the cheapest qualifying units are free, one unit discount per line.
    fn bogo(&self, cart: &Cart) -> Vec<Operation> {
        if self.bogo_category.is_empty() {
            return Vec::new();
        }
        let mut qualifying: Vec<_> = cart
            .lines
            .iter()
            .filter(|line| {
                line.categories
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&self.bogo_category))
            })
            .collect();
        let units: u64 = qualifying.iter().map(|line| u64::from(line.quantity)).sum();
        let group = u64::from(self.bogo_buy) + u64::from(self.bogo_get);
        let mut free = units / group * u64::from(self.bogo_get);
        if free == 0 {
            return Vec::new();
        }
        // Stable: among lines of the same price, the one higher in the cart goes first.
        qualifying.sort_by_key(|line| line.unit_price.amount);
        let label = format!(
            "Buy {} get {} free on {}",
            self.bogo_buy, self.bogo_get, self.bogo_category
        );
        let mut operations = Vec::new();
        for line in qualifying {
            if free == 0 {
                break;
            }
            let take = free.min(u64::from(line.quantity));
            free -= take;
            // At most the line's quantity, which is a u32.
            let take = u32::try_from(take).unwrap_or(line.quantity);
            operations.push(Operation::unit_discount(
                &line.id,
                take,
                DiscountValue::percent(100),
                label.as_str(),
            ));
        }
        operations
    }
}

fn invalid(key: &str, value: &str, expected: &str) -> PluginError {
    PluginError::new(
        "invalid-config",
        format!("{key}: {value:?} is not valid; expected {expected}"),
    )
}

/// "5.00 EUR" for 500 minor units; assumes two decimals, as labels for most currencies do.
/// Integer arithmetic keeps float formatting out of the binary.
fn money(amount: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", amount / 100, amount % 100)
}

impl Pricing for CouponPromotions {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        Ok(Promotions::from_config()?.price(&cart))
    }
}

cartridge_sdk::export_plugin!(pricing, CouponPromotions);

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::pricing::{Action, CartLine, LineDiscount, Money};

    fn defaults() -> Promotions {
        Promotions::from_lookup(|_| None).expect("defaults are valid")
    }

    fn line(id: &str, category: &str, quantity: u32, unit_price: u64) -> CartLine {
        CartLine {
            id: id.into(),
            product_id: format!("product-{id}"),
            sku: format!("SKU-{id}"),
            variant_attributes: vec![],
            categories: vec!["apparel".into(), category.into()],
            quantity,
            unit_price: Money::new(unit_price, "EUR"),
        }
    }

    fn cart(lines: Vec<CartLine>, codes: &[&str]) -> Cart {
        Cart {
            id: "cart-1".into(),
            currency: "EUR".into(),
            lines,
            customer: None,
            coupon_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
            shipping: Some(Money::new(495, "EUR")),
            now: 1_764_000_000_000,
        }
    }

    /// (line id, free units) of every 100 % unit discount.
    fn free_units(ops: &[Operation]) -> Vec<(String, u32)> {
        ops.iter()
            .filter_map(|op| match &op.action {
                Action::LineDiscount(LineDiscount {
                    line_id,
                    value: DiscountValue::BasisPoints(10_000),
                    quantity: Some(q),
                }) => Some((line_id.clone(), *q)),
                _ => None,
            })
            .collect()
    }

    fn order_ops(ops: &[Operation]) -> Vec<&Operation> {
        ops.iter()
            .filter(|op| !matches!(op.action, Action::LineDiscount(_)))
            .collect()
    }

    #[test]
    fn a_cart_without_codes_or_socks_gets_nothing() {
        let ops = defaults().price(&cart(vec![line("l1", "shirts", 5, 1999)], &[]));
        assert!(ops.is_empty());
    }

    #[test]
    fn welcome10_takes_ten_percent_off_the_order_exclusively() {
        let ops = defaults().price(&cart(vec![line("l1", "shirts", 1, 1999)], &["WELCOME10"]));
        assert_eq!(ops.len(), 1);
        assert_eq!(
            ops[0].action,
            Action::OrderDiscount(DiscountValue::BasisPoints(1000))
        );
        assert_eq!(ops[0].code.as_deref(), Some("WELCOME10"));
        assert_eq!(ops[0].stacking, Stacking::Exclusive);
        assert_eq!(ops[0].label, "WELCOME10: 10 % off your order");
    }

    #[test]
    fn freeship_ships_for_free_and_names_its_code() {
        let ops = defaults().price(&cart(vec![line("l1", "shirts", 1, 1999)], &["FREESHIP"]));
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].action, Action::FreeShipping);
        assert_eq!(ops[0].code.as_deref(), Some("FREESHIP"));
        assert_eq!(ops[0].stacking, Stacking::Combine);
    }

    #[test]
    fn save5_takes_five_off_in_the_cart_currency_from_a_subtotal_of_25() {
        let ops = defaults().price(&cart(vec![line("l1", "shirts", 1, 2500)], &["SAVE5"]));
        assert_eq!(
            ops[0].action,
            Action::OrderDiscount(DiscountValue::Amount(Money::new(500, "EUR")))
        );
        assert_eq!(ops[0].code.as_deref(), Some("SAVE5"));
        assert_eq!(ops[0].label, "SAVE5: 5.00 EUR off your order");
    }

    #[test]
    fn save5_is_not_applied_below_a_subtotal_of_25() {
        let ops = defaults().price(&cart(vec![line("l1", "shirts", 1, 2499)], &["SAVE5"]));
        assert!(ops.is_empty());
    }

    #[test]
    fn a_fixed_amount_above_the_subtotal_is_never_offered() {
        let promos = Promotions::from_lookup(|key| match key {
            "fixed-amount" => Some("3000".into()),
            "fixed-min-subtotal" => Some("0".into()),
            _ => None,
        })
        .expect("valid");
        assert!(
            promos
                .price(&cart(vec![line("l1", "x", 1, 2999)], &["SAVE5"]))
                .is_empty()
        );
        assert_eq!(
            promos
                .price(&cart(vec![line("l1", "x", 1, 3000)], &["SAVE5"]))
                .len(),
            1
        );
    }

    #[test]
    fn all_three_codes_can_be_entered_together() {
        let ops = defaults().price(&cart(
            vec![line("l1", "shirts", 2, 1999)],
            &["FREESHIP", "SAVE5", "WELCOME10"],
        ));
        let codes: Vec<_> = order_ops(&ops).iter().map(|op| op.code.clone()).collect();
        assert_eq!(
            codes,
            vec![
                Some("WELCOME10".into()),
                Some("SAVE5".into()),
                Some("FREESHIP".into())
            ]
        );
    }

    #[test]
    fn codes_nobody_configured_are_left_for_other_plugins() {
        let ops = defaults().price(&cart(vec![line("l1", "shirts", 1, 5000)], &["BLACKFRIDAY"]));
        assert!(ops.is_empty());
    }

    #[test]
    fn four_pairs_of_socks_make_one_free() {
        let ops = defaults().price(&cart(vec![line("l1", "socks", 4, 799)], &[]));
        assert_eq!(free_units(&ops), vec![("l1".into(), 1)]);
        assert_eq!(ops[0].label, "Buy 3 get 1 free on socks");
        assert_eq!(ops[0].stacking, Stacking::Combine);
    }

    #[test]
    fn three_pairs_of_socks_are_not_enough() {
        let ops = defaults().price(&cart(vec![line("l1", "socks", 3, 799)], &[]));
        assert!(ops.is_empty());
    }

    #[test]
    fn the_cheapest_socks_are_free_across_lines() {
        // 9 qualifying units: two free, both from the cheapest line.
        let ops = defaults().price(&cart(
            vec![
                line("wool", "socks", 3, 1499),
                line("cotton", "socks", 5, 599),
                line("tee", "shirts", 10, 100),
                line("silk", "socks", 1, 2499),
            ],
            &[],
        ));
        assert_eq!(free_units(&ops), vec![("cotton".into(), 2)]);
    }

    #[test]
    fn free_units_spread_to_the_next_cheapest_line_when_one_runs_out() {
        // 12 units: three free; the cheapest line has only one unit.
        let ops = defaults().price(&cart(
            vec![
                line("wool", "socks", 6, 1499),
                line("cheap", "socks", 1, 299),
                line("cotton", "socks", 5, 599),
            ],
            &[],
        ));
        assert_eq!(
            free_units(&ops),
            vec![("cheap".into(), 1), ("cotton".into(), 2)]
        );
    }

    #[test]
    fn lines_of_the_same_price_are_used_in_cart_order() {
        let ops = defaults().price(&cart(
            vec![line("a", "socks", 2, 500), line("b", "socks", 2, 500)],
            &[],
        ));
        assert_eq!(free_units(&ops), vec![("a".into(), 1)]);
    }

    #[test]
    fn the_category_matches_at_any_level_and_in_any_case() {
        let mut socks = line("l1", "Socks", 4, 799);
        socks.categories = vec!["Socks".into(), "apparel".into()];
        let ops = defaults().price(&cart(vec![socks], &[]));
        assert_eq!(free_units(&ops), vec![("l1".into(), 1)]);
    }

    #[test]
    fn buy_x_get_y_follows_the_configuration() {
        let promos = Promotions::from_lookup(|key| match key {
            "bogo-category" => Some("mugs".into()),
            "bogo-buy" => Some("2".into()),
            "bogo-get" => Some("2".into()),
            _ => None,
        })
        .expect("valid");
        let ops = promos.price(&cart(vec![line("l1", "mugs", 9, 1000)], &[]));
        assert_eq!(free_units(&ops), vec![("l1".into(), 4)]);
        assert_eq!(ops[0].label, "Buy 2 get 2 free on mugs");
    }

    #[test]
    fn configured_codes_are_upper_cased_and_empty_ones_switch_a_deal_off() {
        let promos = Promotions::from_lookup(|key| match key {
            "percent-code" => Some(" spring20 ".into()),
            "percent-off" => Some("20".into()),
            "free-shipping-code" => Some(String::new()),
            "bogo-category" => Some(String::new()),
            _ => None,
        })
        .expect("valid");
        assert_eq!(promos.percent_code, "SPRING20");
        let ops = promos.price(&cart(
            vec![line("l1", "socks", 8, 799)],
            &["SPRING20", "FREESHIP"],
        ));
        assert_eq!(ops.len(), 1);
        assert_eq!(
            ops[0].action,
            Action::OrderDiscount(DiscountValue::BasisPoints(2000))
        );
    }

    #[test]
    fn bad_configuration_is_refused_as_invalid_config() {
        for (key, value) in [
            ("percent-off", "0"),
            ("percent-off", "101"),
            ("percent-off", "ten"),
            ("fixed-amount", "0"),
            ("fixed-amount", "-5"),
            ("bogo-buy", "0"),
            ("bogo-get", "x"),
            ("percent-code", "TWO WORDS"),
        ] {
            let err =
                Promotions::from_lookup(|k| (k == key).then(|| value.to_owned())).expect_err(key);
            assert_eq!(err.code, "invalid-config", "{key} = {value}");
            assert!(err.message.contains(key), "{}", err.message);
        }
    }

    #[test]
    fn the_plugin_prices_with_the_defaults_outside_the_host() {
        let ops = CouponPromotions::price(cart(vec![line("l1", "socks", 4, 799)], &["WELCOME10"]))
            .expect("priced");
        assert_eq!(ops.len(), 2);
    }
}
