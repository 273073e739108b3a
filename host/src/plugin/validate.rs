//! The host's checks on what plugins return. A plugin proposes; these decide whether the
//! proposal is even admissible. An inadmissible output fails the call with `invalid_output`
//! and the hook's failure policy takes over; nothing of it is applied.

use std::collections::HashSet;

use super::bindings::types::Money;
use super::bindings::{fraud, payment, personalization, pricing};
use super::call::PaymentRequest;

/// At most this many operations per pricing result.
pub const MAX_OPERATIONS: usize = 100;
/// At most this many reasons per fraud assessment.
pub const MAX_REASONS: usize = 20;
/// Labels shown to shoppers: 1 to this many characters.
pub const MAX_LABEL_CHARS: usize = 120;

type Check = Result<(), String>;

fn text(what: &str, value: &str, max_chars: usize) -> Check {
    let chars = value.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(format!(
            "{what} must be 1 to {max_chars} characters, got {chars}"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

fn same_currency(what: &str, money: &Money, currency: &str) -> Check {
    if money.currency != currency {
        return Err(format!(
            "{what} is in {:?} but the cart is in {currency:?}",
            money.currency
        ));
    }
    Ok(())
}

fn units(what: &str, quantity: Option<u32>, line: &pricing::CartLine) -> Result<u64, String> {
    match quantity {
        None => Ok(u64::from(line.quantity)),
        Some(0) => Err(format!("{what}: quantity must be at least 1")),
        Some(q) if q > line.quantity => Err(format!(
            "{what}: quantity {q} is more than the line's {}",
            line.quantity
        )),
        Some(q) => Ok(u64::from(q)),
    }
}

fn basis_points(what: &str, bp: u32) -> Check {
    if bp == 0 || bp > 10_000 {
        return Err(format!(
            "{what}: basis points must be 1 to 10000 (0.01 % to 100 %), got {bp}"
        ));
    }
    Ok(())
}

/// Checks a pricing result against the cart it was computed for: lines exist, currencies
/// match, no discount is above what it discounts, fixed prices only lower prices, codes were
/// entered, labels are sane.
pub fn price_result(cart: &pricing::Cart, result: &pricing::PriceResult) -> Check {
    if result.operations.len() > MAX_OPERATIONS {
        return Err(format!(
            "{} operations; at most {MAX_OPERATIONS} are accepted",
            result.operations.len()
        ));
    }
    let subtotal: u64 = cart
        .lines
        .iter()
        .map(|l| l.unit_price.amount.saturating_mul(u64::from(l.quantity)))
        .sum();
    for (i, op) in result.operations.iter().enumerate() {
        let what = format!("operation {i}");
        text(&format!("{what}: label"), &op.label, MAX_LABEL_CHARS)?;
        if let Some(code) = &op.code
            && !cart
                .coupon_codes
                .iter()
                .any(|c| c.eq_ignore_ascii_case(code))
        {
            return Err(format!(
                "{what}: answers to code {code:?}, which the shopper did not enter"
            ));
        }
        let line = |id: &str| {
            cart.lines
                .iter()
                .find(|l| l.id == id)
                .ok_or_else(|| format!("{what}: no cart line has id {id:?}"))
        };
        match &op.action {
            pricing::Action::LineDiscount(d) => {
                let line = line(&d.line_id)?;
                let units = units(&what, d.quantity, line)?;
                match &d.value {
                    pricing::DiscountValue::BasisPoints(bp) => basis_points(&what, *bp)?,
                    pricing::DiscountValue::Amount(amount) => {
                        same_currency(&what, amount, &cart.currency)?;
                        if amount.amount == 0 {
                            return Err(format!("{what}: a discount of 0"));
                        }
                        if amount.amount > line.unit_price.amount {
                            return Err(format!(
                                "{what}: {} off each unit is more than the unit price {}",
                                amount.amount, line.unit_price.amount
                            ));
                        }
                        let _ = units;
                    }
                }
            }
            pricing::Action::FixedUnitPrice(f) => {
                let line = line(&f.line_id)?;
                units(&what, f.quantity, line)?;
                same_currency(&what, &f.unit_price, &cart.currency)?;
                if f.unit_price.amount > line.unit_price.amount {
                    return Err(format!(
                        "{what}: fixed unit price {} is above the unit price {}",
                        f.unit_price.amount, line.unit_price.amount
                    ));
                }
            }
            pricing::Action::OrderDiscount(value) => match value {
                pricing::DiscountValue::BasisPoints(bp) => basis_points(&what, *bp)?,
                pricing::DiscountValue::Amount(amount) => {
                    same_currency(&what, amount, &cart.currency)?;
                    if amount.amount == 0 {
                        return Err(format!("{what}: a discount of 0"));
                    }
                    if amount.amount > subtotal {
                        return Err(format!(
                            "{what}: order discount {} is more than the order subtotal {subtotal}",
                            amount.amount
                        ));
                    }
                }
            },
            pricing::Action::FreeShipping => {}
        }
    }
    Ok(())
}

/// Checks a fraud assessment: the score is 0 to 100 and the reasons are bounded and sane.
pub fn assessment(assessment: &fraud::Assessment) -> Check {
    if assessment.score > 100 {
        return Err(format!("score {} is above 100", assessment.score));
    }
    if assessment.reasons.len() > MAX_REASONS {
        return Err(format!(
            "{} reasons; at most {MAX_REASONS} are accepted",
            assessment.reasons.len()
        ));
    }
    for (i, reason) in assessment.reasons.iter().enumerate() {
        text(&format!("reason {i}: code"), &reason.code, 64)?;
        text(&format!("reason {i}: message"), &reason.message, 500)?;
    }
    Ok(())
}

/// Cleans a ranking: only candidates, each once, at most `limit` recommendations; candidates
/// the plugin left out follow in their default order.
pub fn ranking(
    context: &personalization::Context,
    ranking: personalization::Ranking,
) -> personalization::Ranking {
    let candidates: HashSet<&str> = context.candidates.iter().map(|c| c.sku.as_str()).collect();
    let mut seen = HashSet::new();
    let mut ranked: Vec<String> = ranking
        .ranked
        .into_iter()
        .filter(|sku| candidates.contains(sku.as_str()) && seen.insert(sku.clone()))
        .collect();
    ranked.extend(
        context
            .candidates
            .iter()
            .filter(|c| !seen.contains(&c.sku))
            .map(|c| c.sku.clone()),
    );
    let mut picked = HashSet::new();
    let limit = usize::try_from(context.limit).unwrap_or(usize::MAX);
    let recommended = ranking
        .recommended
        .into_iter()
        .filter(|sku| candidates.contains(sku.as_str()) && picked.insert(sku.clone()))
        .take(limit)
        .collect();
    personalization::Ranking {
        ranked,
        recommended,
    }
}

/// Checks a payment step's result against the request: a reference, the same currency, and no
/// more money moved than was asked for.
pub fn payment_result(request: &PaymentRequest, result: &payment::PaymentResult) -> Check {
    within_asked(result, request.amount())
}

/// Checks what a lookup found against what the authorize step asked for, as
/// [`payment_result`] checks the step's own answer.
pub fn found_payment(request: &payment::FindRequest, found: &payment::PaymentResult) -> Check {
    within_asked(found, Some(&request.amount))
}

fn within_asked(result: &payment::PaymentResult, asked: Option<&Money>) -> Check {
    text("gateway reference", &result.gateway_reference, 255)?;
    if let Some(asked) = asked {
        same_currency("result amount", &result.amount, &asked.currency)?;
        if result.amount.amount > asked.amount {
            return Err(format!(
                "the gateway moved {} but {} was asked for",
                result.amount.amount, asked.amount
            ));
        }
    }
    Ok(())
}

/// Checks a decoded webhook event.
pub fn webhook_event(event: &payment::WebhookEvent) -> Check {
    text("event id", &event.event_id, 255)?;
    if let Some(reference) = &event.gateway_reference {
        text("gateway reference", reference, 255)?;
    }
    Ok(())
}

/// Checks a decoded dispute: its ids and reason are sane text, its amount is money.
pub fn dispute(dispute: &payment::Dispute) -> Check {
    text("event id", &dispute.event_id, 255)?;
    text("dispute id", &dispute.dispute_id, 255)?;
    text("gateway reference", &dispute.gateway_reference, 255)?;
    text("reason", &dispute.reason, 255)?;
    let currency = &dispute.amount.currency;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "dispute currency {currency:?} is not an ISO 4217 code"
        ));
    }
    if dispute.amount.amount == 0 || i64::try_from(dispute.amount.amount).is_err() {
        return Err(format!(
            "dispute amount {} is not a positive amount",
            dispute.amount.amount
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricing::{Action, Cart, CartLine, DiscountValue, LineDiscount, Operation, PriceResult};

    fn money(amount: u64) -> Money {
        Money {
            amount,
            currency: "EUR".into(),
        }
    }

    fn cart() -> Cart {
        Cart {
            id: "c".into(),
            currency: "EUR".into(),
            lines: vec![CartLine {
                id: "l1".into(),
                product_id: "p1".into(),
                sku: "S1".into(),
                variant_attributes: vec![],
                categories: vec![],
                quantity: 2,
                unit_price: money(1000),
            }],
            customer: None,
            coupon_codes: vec!["SAVE".into()],
            shipping: Some(money(500)),
            now: 0,
        }
    }

    fn op(action: Action) -> Operation {
        Operation {
            action,
            label: "deal".into(),
            code: None,
            stacking: pricing::Stacking::Combine,
        }
    }

    fn check(ops: Vec<Operation>) -> Check {
        price_result(&cart(), &PriceResult { operations: ops })
    }

    fn line_discount(line: &str, value: DiscountValue, quantity: Option<u32>) -> Action {
        Action::LineDiscount(LineDiscount {
            line_id: line.into(),
            value,
            quantity,
        })
    }

    #[test]
    fn sensible_operations_pass() {
        check(vec![
            op(line_discount("l1", DiscountValue::BasisPoints(1000), None)),
            op(line_discount(
                "l1",
                DiscountValue::Amount(money(1000)),
                Some(1),
            )),
            op(Action::OrderDiscount(DiscountValue::Amount(money(2000)))),
            op(Action::FreeShipping),
            Operation {
                code: Some("save".into()),
                ..op(Action::FreeShipping)
            },
        ])
        .expect("valid");
    }

    #[test]
    fn discounts_beyond_what_they_discount_are_rejected() {
        let err = check(vec![op(line_discount(
            "l1",
            DiscountValue::Amount(money(1001)),
            None,
        ))])
        .expect_err("above unit price");
        assert!(err.contains("more than the unit price"), "{err}");
        let err = check(vec![op(Action::OrderDiscount(DiscountValue::Amount(
            money(2001),
        )))])
        .expect_err("above subtotal");
        assert!(err.contains("order subtotal"), "{err}");
        let err = check(vec![op(line_discount(
            "l1",
            DiscountValue::BasisPoints(10_001),
            None,
        ))])
        .expect_err("above 100 %");
        assert!(err.contains("basis points"), "{err}");
    }

    #[test]
    fn wrong_currency_unknown_lines_and_unentered_codes_are_rejected() {
        let usd = Money {
            amount: 1,
            currency: "USD".into(),
        };
        for (ops, expected) in [
            (
                vec![op(line_discount("l1", DiscountValue::Amount(usd), None))],
                "\"USD\"",
            ),
            (
                vec![op(line_discount(
                    "nope",
                    DiscountValue::BasisPoints(1),
                    None,
                ))],
                "no cart line",
            ),
            (
                vec![op(line_discount(
                    "l1",
                    DiscountValue::BasisPoints(1),
                    Some(3),
                ))],
                "more than the line's",
            ),
            (
                vec![Operation {
                    code: Some("FREE".into()),
                    ..op(Action::FreeShipping)
                }],
                "did not enter",
            ),
            (
                vec![Operation {
                    label: String::new(),
                    ..op(Action::FreeShipping)
                }],
                "label",
            ),
        ] {
            let err = check(ops).expect_err(expected);
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn a_fixed_price_may_only_lower_the_price() {
        let fixed = |amount| {
            op(Action::FixedUnitPrice(pricing::FixedUnitPrice {
                line_id: "l1".into(),
                unit_price: money(amount),
                quantity: None,
            }))
        };
        check(vec![fixed(900)]).expect("lower");
        assert!(check(vec![fixed(1100)]).is_err());
    }

    #[test]
    fn a_ranking_keeps_only_candidates_each_once() {
        let candidate = |sku: &str| personalization::Candidate {
            sku: sku.into(),
            product_id: sku.into(),
            title: sku.into(),
            categories: vec![],
            price: money(1),
            attributes: vec![],
        };
        let context = personalization::Context {
            customer_id: None,
            customer_tags: vec![],
            purchases: vec![],
            cart_skus: vec![],
            candidates: vec![candidate("A"), candidate("B"), candidate("C")],
            limit: 2,
            now: 0,
        };
        let cleaned = ranking(
            &context,
            personalization::Ranking {
                ranked: vec!["C".into(), "X".into(), "C".into(), "A".into()],
                recommended: vec!["X".into(), "B".into(), "B".into(), "A".into(), "C".into()],
            },
        );
        assert_eq!(cleaned.ranked, vec!["C", "A", "B"]);
        assert_eq!(cleaned.recommended, vec!["B", "A"]);
    }

    #[test]
    fn a_lookup_may_not_find_more_than_was_asked_or_another_currency() {
        let request = payment::FindRequest {
            operation_id: "o:authorize".into(),
            order_reference: "o".into(),
            amount: money(5_997),
            sent_at: 0,
            now: 0,
        };
        let found = |amount: Money, reference: &str| payment::PaymentResult {
            status: payment::PaymentStatus::Authorized,
            gateway_reference: reference.into(),
            amount,
            step_reference: None,
        };
        assert!(found_payment(&request, &found(money(5_997), "pi_1")).is_ok());
        assert!(found_payment(&request, &found(money(5_000), "pi_1")).is_ok());
        assert!(found_payment(&request, &found(money(5_998), "pi_1")).is_err());
        let dollars = Money {
            amount: 5_997,
            currency: "USD".into(),
        };
        assert!(found_payment(&request, &found(dollars, "pi_1")).is_err());
        assert!(found_payment(&request, &found(money(5_997), "")).is_err());
    }

    #[test]
    fn a_dispute_needs_sane_ids_a_reason_and_money() {
        let good = payment::Dispute {
            event_id: "evt_1".into(),
            dispute_id: "dp_1".into(),
            gateway_reference: "pi_1".into(),
            amount: money(5_997),
            status: payment::DisputeStatus::Open,
            reason: "fraudulent".into(),
            respond_by: None,
            occurred_at: 0,
        };
        assert!(dispute(&good).is_ok());
        let broken: [fn(&mut payment::Dispute); 6] = [
            |d| d.dispute_id.clear(),
            |d| d.gateway_reference = "pi\n1".into(),
            |d| d.reason = "r".repeat(256),
            |d| d.amount.amount = 0,
            |d| d.amount.amount = u64::MAX,
            |d| d.amount.currency = "eur".into(),
        ];
        for (i, break_it) in broken.iter().enumerate() {
            let mut bad = good.clone();
            break_it(&mut bad);
            assert!(dispute(&bad).is_err(), "case {i}");
        }
    }
}
