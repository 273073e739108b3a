//! Applying price operations: from the validated decisions of several pricing plugins to one
//! priced cart.
//!
//! Each plugin saw the same cart. Its operations are grouped by target (a line, the order,
//! shipping) and resolved per target:
//!
//! - `stop-after`: applies; operations from *later* plugins on the same target are dropped.
//! - `combine`: applies together with the target's other combinable operations.
//! - `exclusive`: applies alone if it is worth more than everything combinable on the target
//!   together (and more than any other exclusive operation); otherwise it is dropped.
//!
//! Line discounts are computed on the line's catalog price, the order discount on the subtotal
//! after line discounts. Percentages round down (in the merchant's favour). Nothing ever goes
//! below zero: an operation that would is dropped with a reason, never clamped silently, so
//! the shopper sees exactly the discounts that were applied.

use serde::Serialize;

use crate::plugin::PluginRef;
use crate::plugin::bindings::pricing::{Action, Cart, DiscountValue, Operation, Stacking};

/// One plugin's validated decisions, in hook order.
#[derive(Debug, Clone)]
pub struct PluginOperations {
    /// Which plugin decided.
    pub plugin: PluginRef,
    /// What it decided, already validated against the cart.
    pub operations: Vec<Operation>,
}

/// What an operation applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", content = "line_id", rename_all = "snake_case")]
pub enum Target {
    /// One cart line.
    Line(String),
    /// The order subtotal.
    Order,
    /// Shipping.
    Shipping,
}

/// A discount that made it into the price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AppliedDiscount {
    /// The plugin that proposed it (`name@version`).
    pub plugin: String,
    /// The label shown to the shopper.
    pub label: String,
    /// The coupon code it answers to.
    pub code: Option<String>,
    /// What it discounts.
    pub target: Target,
    /// How much it took off, in minor units.
    pub amount: u64,
}

/// An operation that was valid but did not make it into the price, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DroppedOperation {
    /// The plugin that proposed it.
    pub plugin: String,
    /// Its label.
    pub label: String,
    /// What it would have discounted.
    pub target: Target,
    /// Why it was not applied.
    pub reason: String,
}

/// A priced line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PricedLine {
    /// The line's id.
    pub id: String,
    /// Its SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
    /// Catalog price per unit.
    pub unit_price: u64,
    /// Unit price × quantity.
    pub subtotal: u64,
    /// Everything taken off the line.
    pub discount: u64,
    /// Subtotal − discount.
    pub total: u64,
}

/// The cart with every applied discount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PricedCart {
    /// ISO 4217.
    pub currency: String,
    /// The lines.
    pub lines: Vec<PricedLine>,
    /// Sum of line subtotals.
    pub subtotal: u64,
    /// Sum of line discounts.
    pub line_discounts: u64,
    /// Discount on the order.
    pub order_discount: u64,
    /// Shipping before discounts (0 when none was chosen).
    pub shipping: u64,
    /// Discount on shipping.
    pub shipping_discount: u64,
    /// What the shopper pays (before tax).
    pub total: u64,
    /// The discounts applied, in the order they were applied.
    pub applied: Vec<AppliedDiscount>,
    /// Valid operations that were not applied.
    pub dropped: Vec<DroppedOperation>,
}

/// The cart without any discount.
pub fn list_price(cart: &Cart) -> PricedCart {
    apply(cart, &[])
}

struct Candidate<'a> {
    index: usize,
    plugin: String,
    op: &'a Operation,
    target: Target,
}

/// Applies the plugins' operations, in the order given, to the cart.
pub fn apply(cart: &Cart, decisions: &[PluginOperations]) -> PricedCart {
    let mut candidates = Vec::new();
    for (index, decision) in decisions.iter().enumerate() {
        let plugin = format!("{}@{}", decision.plugin.name, decision.plugin.version);
        for op in &decision.operations {
            let target = match &op.action {
                Action::LineDiscount(d) => Target::Line(d.line_id.clone()),
                Action::FixedUnitPrice(f) => Target::Line(f.line_id.clone()),
                Action::OrderDiscount(_) => Target::Order,
                Action::FreeShipping => Target::Shipping,
            };
            candidates.push(Candidate {
                index,
                plugin: plugin.clone(),
                op,
                target,
            });
        }
    }

    let mut applied = Vec::new();
    let mut dropped = Vec::new();

    let mut lines: Vec<PricedLine> = cart
        .lines
        .iter()
        .map(|l| {
            let subtotal = l.unit_price.amount.saturating_mul(u64::from(l.quantity));
            PricedLine {
                id: l.id.clone(),
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.amount,
                subtotal,
                discount: 0,
                total: subtotal,
            }
        })
        .collect();

    for line in &mut lines {
        let target = Target::Line(line.id.clone());
        let base = line.subtotal;
        line.discount = resolve(&target, base, cart, &candidates, &mut applied, &mut dropped);
        line.total = line.subtotal - line.discount;
    }
    let subtotal: u64 = lines.iter().map(|l| l.subtotal).sum();
    let line_discounts: u64 = lines.iter().map(|l| l.discount).sum();
    let after_lines = subtotal - line_discounts;
    let order_discount = resolve(
        &Target::Order,
        after_lines,
        cart,
        &candidates,
        &mut applied,
        &mut dropped,
    );
    let shipping = cart.shipping.as_ref().map_or(0, |m| m.amount);
    let shipping_discount = resolve(
        &Target::Shipping,
        shipping,
        cart,
        &candidates,
        &mut applied,
        &mut dropped,
    );

    PricedCart {
        currency: cart.currency.clone(),
        lines,
        subtotal,
        line_discounts,
        order_discount,
        shipping,
        shipping_discount,
        total: after_lines - order_discount + (shipping - shipping_discount),
        applied,
        dropped,
    }
}

/// What `op` is worth against `base` (the target's undiscounted amount).
fn worth(op: &Operation, base: u64, cart: &Cart) -> u64 {
    let share = |bp: u32, of: u64| {
        u64::try_from(u128::from(of) * u128::from(bp) / 10_000).unwrap_or(u64::MAX)
    };
    match &op.action {
        Action::LineDiscount(d) => {
            let Some(line) = cart.lines.iter().find(|l| l.id == d.line_id) else {
                return 0;
            };
            let units = u64::from(d.quantity.unwrap_or(line.quantity));
            match &d.value {
                DiscountValue::BasisPoints(bp) => {
                    share(*bp, line.unit_price.amount.saturating_mul(units))
                }
                DiscountValue::Amount(m) => m.amount.saturating_mul(units),
            }
        }
        Action::FixedUnitPrice(f) => {
            let Some(line) = cart.lines.iter().find(|l| l.id == f.line_id) else {
                return 0;
            };
            let units = u64::from(f.quantity.unwrap_or(line.quantity));
            line.unit_price
                .amount
                .saturating_sub(f.unit_price.amount)
                .saturating_mul(units)
        }
        Action::OrderDiscount(DiscountValue::BasisPoints(bp)) => share(*bp, base),
        Action::OrderDiscount(DiscountValue::Amount(m)) => m.amount,
        Action::FreeShipping => base,
    }
}

/// Resolves stacking for one target and returns the total discount applied to it.
fn resolve(
    target: &Target,
    base: u64,
    cart: &Cart,
    candidates: &[Candidate<'_>],
    applied: &mut Vec<AppliedDiscount>,
    dropped: &mut Vec<DroppedOperation>,
) -> u64 {
    let mut drop = |c: &Candidate<'_>, reason: String| {
        dropped.push(DroppedOperation {
            plugin: c.plugin.clone(),
            label: c.op.label.clone(),
            target: target.clone(),
            reason,
        });
    };

    let mut stopped_by: Option<(usize, &str)> = None;
    let mut combined: Vec<&Candidate<'_>> = Vec::new();
    let mut exclusive: Option<(&Candidate<'_>, u64)> = None;
    for c in candidates.iter().filter(|c| &c.target == target) {
        if let Some((index, plugin)) = stopped_by
            && c.index > index
        {
            drop(
                c,
                format!("{plugin} stopped further discounts on this target"),
            );
            continue;
        }
        match c.op.stacking {
            Stacking::Combine => combined.push(c),
            Stacking::StopAfter => {
                combined.push(c);
                stopped_by.get_or_insert((c.index, &c.plugin));
            }
            Stacking::Exclusive => {
                let value = worth(c.op, base, cart);
                match exclusive {
                    Some((best, best_value)) if best_value >= value => {
                        drop(
                            c,
                            format!("exclusive deal {:?} is worth more", best.op.label),
                        );
                    }
                    Some((best, _)) => {
                        drop(
                            best,
                            format!("exclusive deal {:?} is worth more", c.op.label),
                        );
                        exclusive = Some((c, value));
                    }
                    None => exclusive = Some((c, value)),
                }
            }
        }
    }

    let combined_value: u64 = combined.iter().map(|c| worth(c.op, base, cart)).sum();
    let winners: Vec<&Candidate<'_>> = match exclusive {
        Some((best, value)) if value > combined_value => {
            for c in &combined {
                drop(
                    c,
                    format!("exclusive deal {:?} is worth more", best.op.label),
                );
            }
            vec![best]
        }
        Some((best, _)) => {
            drop(
                best,
                "the combinable deals together are worth more".to_owned(),
            );
            combined
        }
        None => combined,
    };

    let mut total = 0u64;
    for c in winners {
        let amount = worth(c.op, base, cart);
        if amount == 0 {
            drop(c, "worth nothing on this target".to_owned());
            continue;
        }
        if total.saturating_add(amount) > base {
            drop(c, "would take the target below zero".to_owned());
            continue;
        }
        total += amount;
        applied.push(AppliedDiscount {
            plugin: c.plugin.clone(),
            label: c.op.label.clone(),
            code: c.op.code.clone(),
            target: target.clone(),
            amount,
        });
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::HookKind;
    use crate::plugin::bindings::pricing::{CartLine, FixedUnitPrice, LineDiscount};
    use crate::plugin::bindings::types::Money;

    fn money(amount: u64) -> Money {
        Money {
            amount,
            currency: "EUR".into(),
        }
    }

    fn cart() -> Cart {
        let line = |id: &str, quantity, price| CartLine {
            id: id.into(),
            product_id: id.into(),
            sku: id.to_uppercase(),
            variant_attributes: vec![],
            categories: vec![],
            quantity,
            unit_price: money(price),
        };
        Cart {
            id: "c".into(),
            currency: "EUR".into(),
            lines: vec![line("a", 2, 1000), line("b", 1, 3000)],
            customer: None,
            coupon_codes: vec![],
            shipping: Some(money(500)),
            now: 0,
        }
    }

    fn plugin(name: &str, operations: Vec<Operation>) -> PluginOperations {
        PluginOperations {
            plugin: PluginRef {
                name: name.into(),
                version: semver::Version::new(1, 0, 0),
                hook: HookKind::Pricing,
            },
            operations,
        }
    }

    fn op(action: Action, label: &str, stacking: Stacking) -> Operation {
        Operation {
            action,
            label: label.into(),
            code: None,
            stacking,
        }
    }

    fn percent_off(line: &str, percent: u32, stacking: Stacking) -> Operation {
        op(
            Action::LineDiscount(LineDiscount {
                line_id: line.into(),
                value: DiscountValue::BasisPoints(percent * 100),
                quantity: None,
            }),
            &format!("{percent}% off {line}"),
            stacking,
        )
    }

    #[test]
    fn no_operations_means_list_price() {
        let priced = list_price(&cart());
        assert_eq!(priced.subtotal, 5000);
        assert_eq!(priced.total, 5500);
        assert!(priced.applied.is_empty());
    }

    #[test]
    fn combinable_discounts_add_up_and_the_order_discount_comes_after_lines() {
        let priced = apply(
            &cart(),
            &[
                plugin("p1", vec![percent_off("a", 10, Stacking::Combine)]),
                plugin(
                    "p2",
                    vec![
                        percent_off("a", 5, Stacking::Combine),
                        op(
                            Action::OrderDiscount(DiscountValue::BasisPoints(1000)),
                            "10% off the order",
                            Stacking::Combine,
                        ),
                        op(Action::FreeShipping, "free shipping", Stacking::Combine),
                    ],
                ),
            ],
        );
        assert_eq!(priced.lines[0].discount, 300);
        assert_eq!(priced.line_discounts, 300);
        // 10 % of the 4700 left after line discounts.
        assert_eq!(priced.order_discount, 470);
        assert_eq!(priced.shipping_discount, 500);
        assert_eq!(priced.total, 5000 - 300 - 470);
        assert_eq!(priced.applied.len(), 4);
        assert!(priced.dropped.is_empty());
    }

    #[test]
    fn an_exclusive_deal_wins_only_when_it_is_worth_more() {
        let priced = apply(
            &cart(),
            &[
                plugin("p1", vec![percent_off("a", 10, Stacking::Combine)]),
                plugin("p2", vec![percent_off("a", 30, Stacking::Exclusive)]),
            ],
        );
        assert_eq!(priced.lines[0].discount, 600);
        assert_eq!(priced.applied.len(), 1);
        assert_eq!(priced.dropped.len(), 1);

        let priced = apply(
            &cart(),
            &[
                plugin("p1", vec![percent_off("a", 40, Stacking::Combine)]),
                plugin("p2", vec![percent_off("a", 30, Stacking::Exclusive)]),
            ],
        );
        assert_eq!(priced.lines[0].discount, 800);
        assert_eq!(
            priced.dropped[0].reason,
            "the combinable deals together are worth more"
        );
    }

    #[test]
    fn stop_after_shuts_out_later_plugins_only() {
        let priced = apply(
            &cart(),
            &[
                plugin(
                    "p1",
                    vec![
                        percent_off("a", 10, Stacking::StopAfter),
                        percent_off("a", 5, Stacking::Combine),
                    ],
                ),
                plugin("p2", vec![percent_off("a", 20, Stacking::Combine)]),
            ],
        );
        assert_eq!(priced.lines[0].discount, 300);
        assert_eq!(priced.dropped.len(), 1);
        assert!(priced.dropped[0].reason.contains("p1@1.0.0 stopped"));
    }

    #[test]
    fn nothing_goes_below_zero() {
        let priced = apply(
            &cart(),
            &[
                plugin("p1", vec![percent_off("b", 70, Stacking::Combine)]),
                plugin(
                    "p2",
                    vec![
                        percent_off("b", 50, Stacking::Combine),
                        op(Action::FreeShipping, "free", Stacking::Combine),
                        op(Action::FreeShipping, "free again", Stacking::Combine),
                    ],
                ),
            ],
        );
        assert_eq!(priced.lines[1].discount, 2100);
        assert_eq!(priced.lines[1].total, 900);
        assert_eq!(priced.shipping_discount, 500);
        assert_eq!(priced.dropped.len(), 2);
        assert!(
            priced
                .dropped
                .iter()
                .all(|d| d.reason.contains("below zero"))
        );
    }

    #[test]
    fn a_fixed_price_is_worth_the_difference_on_its_units() {
        let priced = apply(
            &cart(),
            &[plugin(
                "p1",
                vec![op(
                    Action::FixedUnitPrice(FixedUnitPrice {
                        line_id: "a".into(),
                        unit_price: money(600),
                        quantity: Some(1),
                    }),
                    "one at 6",
                    Stacking::Combine,
                )],
            )],
        );
        assert_eq!(priced.lines[0].discount, 400);
    }
}
