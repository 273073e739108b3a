//! Rule-based fraud scoring with reasons.
//!
//! Each rule that fires adds points and a [`Reason`] with a stable code:
//!
//! | code                       | rule                                                  | points |
//! |----------------------------|-------------------------------------------------------|--------|
//! | `velocity-orders`          | 3 or more orders in the last 24 hours                 | +40    |
//! | `velocity-failed-payments` | 3 or more failed payments in the last 24 hours        | +30    |
//! | `amount-high`              | total of 2,000.00 or more (below 5,000.00)            | +25    |
//! | `amount-very-high`         | total of 5,000.00 or more (instead of `amount-high`)  | +50    |
//! | `first-order-high-value`   | first order (no earlier ones) with a total of 500.00+ | +20    |
//! | `address-mismatch`         | billing and shipping countries differ                 | +25    |
//! | `chargeback-history`       | any chargeback on earlier orders                      | +60    |
//!
//! The score is the sum, capped at 100. A score of `review-at` (default 50) or more holds the
//! order for review, `deny-at` (default 80) or more refuses it; both are configurable, from 1
//! to 100, with `review-at` no higher than `deny-at`. A bad value fails the call with
//! `invalid-config` (and fraud fails closed).
//!
//! Amounts are minor units of the checkout's currency and assume two decimals (200000 is
//! 2,000.00 EUR); the contract does not say how many decimals a currency has.

use cartridge_sdk::PluginError;
use cartridge_sdk::fraud::{Assessment, Checkout, Fraud, Reason};

struct RulesFraud;

/// 3 or more orders in the last 24 hours.
const VELOCITY_ORDERS: u32 = 3;
/// 3 or more failed payments in the last 24 hours.
const VELOCITY_FAILED_PAYMENTS: u32 = 3;
/// 2,000.00 in minor units.
const AMOUNT_HIGH: u64 = 200_000;
/// 5,000.00 in minor units.
const AMOUNT_VERY_HIGH: u64 = 500_000;
/// 500.00 in minor units.
const FIRST_ORDER_HIGH_VALUE: u64 = 50_000;

const DEFAULT_REVIEW_AT: u32 = 50;
const DEFAULT_DENY_AT: u32 = 80;

/// Where the decision changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Thresholds {
    review_at: u32,
    deny_at: u32,
}

impl Thresholds {
    /// Reads the thresholds from the host's configuration.
    fn from_config() -> Result<Self, PluginError> {
        Self::parse(
            cartridge_sdk::config("review-at").as_deref(),
            cartridge_sdk::config("deny-at").as_deref(),
        )
    }

    /// The thresholds from their configured text; a missing one takes its default.
    fn parse(review_at: Option<&str>, deny_at: Option<&str>) -> Result<Self, PluginError> {
        let threshold = |key: &str, value: Option<&str>, default: u32| match value {
            None => Ok(default),
            Some(text) => match text.trim().parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => Ok(n),
                _ => Err(PluginError::new(
                    "invalid-config",
                    format!("{key}: {text:?} is not a whole number from 1 to 100"),
                )),
            },
        };
        let thresholds = Self {
            review_at: threshold("review-at", review_at, DEFAULT_REVIEW_AT)?,
            deny_at: threshold("deny-at", deny_at, DEFAULT_DENY_AT)?,
        };
        if thresholds.review_at > thresholds.deny_at {
            return Err(PluginError::new(
                "invalid-config",
                format!(
                    "review-at ({}) must not be above deny-at ({})",
                    thresholds.review_at, thresholds.deny_at
                ),
            ));
        }
        Ok(thresholds)
    }
}

/// Runs every rule over `checkout`: the points (uncapped) and a reason per rule that fired.
fn score(checkout: &Checkout) -> (u32, Vec<Reason>) {
    let history = &checkout.customer.history;
    let total = checkout.total.amount;
    let currency = &checkout.total.currency;
    let mut points = 0;
    let mut reasons = Vec::new();
    let mut fire = |add: u32, code: &str, message: String| {
        points += add;
        reasons.push(Reason::new(code, message));
    };

    if history.orders_last_24h >= VELOCITY_ORDERS {
        fire(
            40,
            "velocity-orders",
            format!(
                "{} orders in the last 24 hours ({VELOCITY_ORDERS} or more)",
                history.orders_last_24h
            ),
        );
    }
    if history.failed_payments_last_24h >= VELOCITY_FAILED_PAYMENTS {
        fire(
            30,
            "velocity-failed-payments",
            format!(
                "{} failed payments in the last 24 hours ({VELOCITY_FAILED_PAYMENTS} or more)",
                history.failed_payments_last_24h
            ),
        );
    }
    if total >= AMOUNT_VERY_HIGH {
        fire(
            50,
            "amount-very-high",
            format!(
                "total {} is {} or more",
                money(total, currency),
                money(AMOUNT_VERY_HIGH, currency)
            ),
        );
    } else if total >= AMOUNT_HIGH {
        fire(
            25,
            "amount-high",
            format!(
                "total {} is {} or more",
                money(total, currency),
                money(AMOUNT_HIGH, currency)
            ),
        );
    }
    if history.order_count == 0 && total >= FIRST_ORDER_HIGH_VALUE {
        fire(
            20,
            "first-order-high-value",
            format!(
                "first order, total {} is {} or more",
                money(total, currency),
                money(FIRST_ORDER_HIGH_VALUE, currency)
            ),
        );
    }
    if let (Some(billing), Some(shipping)) = (&checkout.billing_address, &checkout.shipping_address)
        && !billing
            .country
            .trim()
            .eq_ignore_ascii_case(shipping.country.trim())
    {
        fire(
            25,
            "address-mismatch",
            format!(
                "billing country {} but shipping country {}",
                billing.country, shipping.country
            ),
        );
    }
    if history.chargebacks > 0 {
        fire(
            60,
            "chargeback-history",
            format!("{} chargeback(s) on earlier orders", history.chargebacks),
        );
    }
    (points, reasons)
}

/// "2,000.00 EUR" for 200000 minor units, without floats.
fn money(amount: u64, currency: &str) -> String {
    let units = (amount / 100).to_string();
    let mut grouped = String::with_capacity(units.len() + units.len() / 3);
    for (i, digit) in units.chars().enumerate() {
        if i > 0 && (units.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{grouped}.{:02} {currency}", amount % 100)
}

fn assess(checkout: &Checkout, thresholds: Thresholds) -> Assessment {
    let (points, reasons) = score(checkout);
    Assessment::from_score(points, reasons, thresholds.review_at, thresholds.deny_at)
}

impl Fraud for RulesFraud {
    fn assess(checkout: Checkout) -> Result<Assessment, PluginError> {
        Ok(assess(&checkout, Thresholds::from_config()?))
    }
}

cartridge_sdk::export_plugin!(fraud, RulesFraud);

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::fraud::{
        Address, CheckoutLine, Customer, CustomerHistory, Decision, Money, PaymentMethod,
    };

    const DEFAULTS: Thresholds = Thresholds {
        review_at: DEFAULT_REVIEW_AT,
        deny_at: DEFAULT_DENY_AT,
    };

    fn eur(amount: u64) -> Money {
        Money::new(amount, "EUR")
    }

    fn address(country: &str) -> Address {
        Address {
            name: Some("Alex Example".into()),
            line1: Some("Hauptstraße 1".into()),
            line2: None,
            city: Some("Berlin".into()),
            region: None,
            postal_code: Some("10115".into()),
            country: country.into(),
        }
    }

    /// A returning customer's modest checkout that no rule objects to.
    fn checkout(total: u64) -> Checkout {
        Checkout {
            id: "chk-1".into(),
            currency: "EUR".into(),
            subtotal: eur(total),
            discount_total: eur(0),
            shipping_total: eur(0),
            total: eur(total),
            lines: vec![CheckoutLine {
                sku: "SKU-1".into(),
                product_id: "p1".into(),
                quantity: 1,
                total: eur(total),
                categories: vec![],
            }],
            customer: Customer {
                id: Some("cus_1".into()),
                email: "alex@example.com".into(),
                tags: vec![],
                history: CustomerHistory {
                    order_count: 4,
                    orders_last_24h: 0,
                    failed_payments_last_24h: 0,
                    lifetime_spend: eur(40_000),
                    chargebacks: 0,
                    first_seen: Some(1_700_000_000_000),
                },
            },
            billing_address: Some(address("DE")),
            shipping_address: Some(address("DE")),
            client_ip: None,
            payment: PaymentMethod {
                kind: "card".into(),
                brand: Some("visa".into()),
                last4: Some("4242".into()),
                issuer_country: Some("DE".into()),
                fingerprint: None,
                metadata: vec![],
            },
            now: 1_764_000_000_000,
        }
    }

    fn codes(assessment: &Assessment) -> Vec<&str> {
        assessment.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    #[test]
    fn an_ordinary_checkout_is_allowed_without_reasons() {
        let assessment = assess(&checkout(8_900), DEFAULTS);
        assert_eq!(assessment.score, 0);
        assert_eq!(assessment.decision, Decision::Allow);
        assert!(assessment.reasons.is_empty());
    }

    #[test]
    fn three_orders_in_a_day_add_forty_for_velocity() {
        let mut c = checkout(8_900);
        c.customer.history.orders_last_24h = 3;
        let assessment = assess(&c, DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (40, vec!["velocity-orders"])
        );
        assert_eq!(assessment.decision, Decision::Allow);
        assert_eq!(
            assessment.reasons[0].message,
            "3 orders in the last 24 hours (3 or more)"
        );
        c.customer.history.orders_last_24h = 2;
        assert_eq!(assess(&c, DEFAULTS).score, 0);
    }

    #[test]
    fn three_failed_payments_in_a_day_add_thirty() {
        let mut c = checkout(8_900);
        c.customer.history.failed_payments_last_24h = 5;
        let assessment = assess(&c, DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (30, vec!["velocity-failed-payments"])
        );
    }

    #[test]
    fn a_total_of_two_thousand_adds_twenty_five() {
        let assessment = assess(&checkout(200_000), DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (25, vec!["amount-high"])
        );
        assert_eq!(
            assessment.reasons[0].message,
            "total 2,000.00 EUR is 2,000.00 EUR or more"
        );
        assert_eq!(assess(&checkout(199_999), DEFAULTS).score, 0);
    }

    #[test]
    fn a_total_of_five_thousand_adds_fifty_instead_of_twenty_five() {
        let assessment = assess(&checkout(500_000), DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (50, vec!["amount-very-high"])
        );
        assert_eq!(assessment.decision, Decision::Review);
    }

    #[test]
    fn a_first_order_of_five_hundred_adds_twenty() {
        let mut c = checkout(50_000);
        c.customer.history.order_count = 0;
        let assessment = assess(&c, DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (20, vec!["first-order-high-value"])
        );
        c.total = eur(49_999);
        assert_eq!(assess(&c, DEFAULTS).score, 0);
    }

    #[test]
    fn billing_and_shipping_in_different_countries_add_twenty_five() {
        let mut c = checkout(8_900);
        c.shipping_address = Some(address("FR"));
        let assessment = assess(&c, DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (25, vec!["address-mismatch"])
        );
        assert_eq!(
            assessment.reasons[0].message,
            "billing country DE but shipping country FR"
        );
    }

    #[test]
    fn a_missing_address_or_a_different_case_is_no_mismatch() {
        let mut c = checkout(8_900);
        c.shipping_address = None;
        assert_eq!(assess(&c, DEFAULTS).score, 0);
        c.shipping_address = Some(address("de"));
        assert_eq!(assess(&c, DEFAULTS).score, 0);
    }

    #[test]
    fn any_chargeback_adds_sixty() {
        let mut c = checkout(8_900);
        c.customer.history.chargebacks = 1;
        let assessment = assess(&c, DEFAULTS);
        assert_eq!(
            (assessment.score, codes(&assessment)),
            (60, vec!["chargeback-history"])
        );
        assert_eq!(assessment.decision, Decision::Review);
    }

    #[test]
    fn reasons_add_up_and_the_score_is_capped_at_a_hundred() {
        let mut c = checkout(600_000);
        c.customer.history.order_count = 0;
        c.customer.history.orders_last_24h = 4;
        c.customer.history.failed_payments_last_24h = 3;
        c.customer.history.chargebacks = 2;
        c.shipping_address = Some(address("US"));
        let assessment = assess(&c, DEFAULTS);
        assert_eq!(assessment.score, 100);
        assert_eq!(assessment.decision, Decision::Deny);
        assert_eq!(
            codes(&assessment),
            vec![
                "velocity-orders",
                "velocity-failed-payments",
                "amount-very-high",
                "first-order-high-value",
                "address-mismatch",
                "chargeback-history",
            ]
        );
        assert_eq!(score(&c).0, 40 + 30 + 50 + 20 + 25 + 60);
    }

    #[test]
    fn fifty_holds_for_review_and_eighty_denies_by_default() {
        let mut c = checkout(200_000);
        c.shipping_address = Some(address("FR"));
        assert_eq!(assess(&c, DEFAULTS).decision, Decision::Review); // 25 + 25
        c.customer.history.failed_payments_last_24h = 3;
        assert_eq!(assess(&c, DEFAULTS).decision, Decision::Deny); // + 30
    }

    #[test]
    fn configured_thresholds_move_the_decision() {
        let strict = Thresholds::parse(Some("20"), Some(" 40 ")).expect("valid");
        assert_eq!(
            strict,
            Thresholds {
                review_at: 20,
                deny_at: 40
            }
        );
        let mut c = checkout(8_900);
        c.shipping_address = Some(address("FR"));
        assert_eq!(assess(&c, strict).decision, Decision::Review);
        c.customer.history.orders_last_24h = 3;
        assert_eq!(assess(&c, strict).decision, Decision::Deny);
    }

    #[test]
    fn missing_thresholds_take_the_defaults() {
        assert_eq!(Thresholds::parse(None, None).expect("defaults"), DEFAULTS);
        assert_eq!(
            Thresholds::parse(None, Some("90")).expect("valid"),
            Thresholds {
                review_at: 50,
                deny_at: 90
            }
        );
    }

    #[test]
    fn bad_thresholds_are_refused_as_invalid_config() {
        for (review, deny) in [
            (Some("fifty"), None),
            (None, Some("")),
            (Some("0"), None),
            (None, Some("101")),
            (Some("-1"), None),
            (Some("90"), Some("80")),
        ] {
            let err = Thresholds::parse(review, deny).expect_err("invalid");
            assert_eq!(err.code, "invalid-config", "{review:?} {deny:?}");
        }
    }

    #[test]
    fn amounts_in_messages_are_grouped_without_floats() {
        assert_eq!(money(0, "EUR"), "0.00 EUR");
        assert_eq!(money(99_999, "EUR"), "999.99 EUR");
        assert_eq!(money(123_456_789, "USD"), "1,234,567.89 USD");
    }

    #[test]
    fn the_plugin_assesses_with_the_default_thresholds_outside_the_host() {
        let mut c = checkout(8_900);
        c.customer.history.chargebacks = 1;
        c.customer.history.orders_last_24h = 3;
        let assessment = RulesFraud::assess(c).expect("assessed");
        assert_eq!(
            (assessment.score, assessment.decision),
            (100, Decision::Deny)
        );
    }
}
