//! Tiered bulk discount: a line of 3 or more units gets 5 % off, 10 or more 10 %, 25 or more
//! 15 %. The tiers can be changed with the `tiers` configuration value, e.g. "3:500,10:1000"
//! (minimum quantity : basis points).

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, DiscountValue, Operation, Pricing};

struct TieredDiscount;

const DEFAULT_TIERS: &[(u32, u32)] = &[(3, 500), (10, 1000), (25, 1500)];

fn tiers() -> Result<Vec<(u32, u32)>, PluginError> {
    let Some(spec) = cartridge_sdk::config("tiers") else {
        return Ok(DEFAULT_TIERS.to_vec());
    };
    parse_tiers(&spec)
}

fn parse_tiers(spec: &str) -> Result<Vec<(u32, u32)>, PluginError> {
    let invalid = || PluginError::new("invalid-config", format!("tiers: cannot parse {spec:?}"));
    let mut tiers = spec
        .split(',')
        .map(|tier| {
            let (min, bp) = tier.trim().split_once(':').ok_or_else(invalid)?;
            let min: u32 = min.trim().parse().map_err(|_| invalid())?;
            let bp: u32 = bp.trim().parse().map_err(|_| invalid())?;
            if bp > 10_000 {
                return Err(invalid());
            }
            Ok((min, bp))
        })
        .collect::<Result<Vec<_>, _>>()?;
    tiers.sort_unstable();
    Ok(tiers)
}

/// "5 %" for 500 basis points, "12.5 %" for 1250; integer arithmetic keeps float formatting
/// out of the binary.
fn percent_label(bp: u32) -> String {
    match bp % 100 {
        0 => format!("{} %", bp / 100),
        rest if rest % 10 == 0 => format!("{}.{} %", bp / 100, rest / 10),
        rest => format!("{}.{rest:02} %", bp / 100),
    }
}

impl Pricing for TieredDiscount {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let tiers = tiers()?;
        Ok(cart
            .lines
            .iter()
            .filter_map(|line| {
                let &(min, bp) = tiers.iter().rev().find(|(min, _)| line.quantity >= *min)?;
                let label = format!("{} off {min} or more", percent_label(bp));
                Some(Operation::line_discount(
                    &line.id,
                    DiscountValue::BasisPoints(bp),
                    label,
                ))
            })
            .collect())
    }
}

cartridge_sdk::export_plugin!(pricing, TieredDiscount);

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::pricing::{Action, CartLine, LineDiscount, Money};

    fn cart(quantities: &[u32]) -> Cart {
        Cart {
            id: "cart-1".into(),
            currency: "EUR".into(),
            lines: quantities
                .iter()
                .enumerate()
                .map(|(i, &quantity)| CartLine {
                    id: format!("line-{i}"),
                    product_id: format!("product-{i}"),
                    sku: format!("SKU-{i}"),
                    variant_attributes: vec![],
                    categories: vec![],
                    quantity,
                    unit_price: Money::new(1000, "EUR"),
                })
                .collect(),
            customer: None,
            coupon_codes: vec![],
            shipping: None,
            now: 0,
        }
    }

    fn discounts(ops: &[Operation]) -> Vec<(String, u32)> {
        ops.iter()
            .map(|op| match &op.action {
                Action::LineDiscount(LineDiscount {
                    line_id,
                    value: DiscountValue::BasisPoints(bp),
                    quantity: None,
                }) => (line_id.clone(), *bp),
                other => panic!("unexpected action {other:?}"),
            })
            .collect()
    }

    #[test]
    fn each_line_gets_the_highest_tier_it_reaches() {
        let ops = TieredDiscount::price(cart(&[1, 3, 10, 30])).expect("priced");
        assert_eq!(
            discounts(&ops),
            vec![
                ("line-1".into(), 500),
                ("line-2".into(), 1000),
                ("line-3".into(), 1500)
            ]
        );
        assert_eq!(ops[0].label, "5 % off 3 or more");
    }

    #[test]
    fn a_cart_below_every_tier_is_left_alone() {
        assert!(
            TieredDiscount::price(cart(&[1, 2]))
                .expect("priced")
                .is_empty()
        );
    }

    #[test]
    fn tiers_parse_from_configuration_and_bad_ones_are_refused() {
        assert_eq!(
            parse_tiers("10:1000, 2:250").expect("valid"),
            vec![(2, 250), (10, 1000)]
        );
        assert_eq!(
            parse_tiers("2:x").expect_err("invalid").code,
            "invalid-config"
        );
        assert_eq!(
            parse_tiers("2:10001").expect_err("over 100 %").code,
            "invalid-config"
        );
    }

    #[test]
    fn labels_never_need_floats() {
        assert_eq!(percent_label(1250), "12.5 %");
        assert_eq!(percent_label(1234), "12.34 %");
    }
}
