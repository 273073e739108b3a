//! Example plugins compiled into the host, for one purpose: the checkout benchmark's
//! comparison of a hook run as a sandboxed component with the *same rule source* run as
//! native code. Built only with the `native-rules` feature; `cartridge serve --native-rules`
//! then serves the plugins of these names natively.
//!
//! The plugins' source files are compiled here as modules, not linked as their crates: a plugin
//! crate stays a `cdylib` alone (adding an `rlib` output costs its component ~14 % in size, as
//! the whole-program optimisation then has less to work with). Outside WebAssembly the SDK's
//! `export_plugin!` emits plain functions (`cartridge_native_price`, …) instead of component
//! exports.
//!
//! A native call takes the same input, answers through the same validation and the same
//! failure policy, and reports the same statistics (without fuel or memory, which native code
//! does not have). The inputs and outputs cross between the host's contract types and the
//! SDK's field by field (both are generated from the one WIT contract): an input is cloned
//! once, as a native plugin taking its own types would need, and nothing is serialised.

use std::collections::BTreeMap;

use super::PaymentRequest;
use super::bindings::{fraud, payment, pricing, types};
use cartridge_sdk as sdk;

#[allow(missing_docs, dead_code)]
#[path = "../../../plugins/examples/tiered-discount/src/lib.rs"]
mod tiered_discount;

#[allow(missing_docs, dead_code)]
#[path = "../../../plugins/examples/coupon-promotions/src/lib.rs"]
mod coupon_promotions;

#[allow(missing_docs, dead_code)]
#[path = "../../../plugins/examples/rules-fraud/src/lib.rs"]
mod rules_fraud;

#[allow(missing_docs, dead_code)]
#[path = "../../../plugins/examples/test-gateway/src/lib.rs"]
mod test_gateway;

type Pricing = fn(sdk::pricing::Cart) -> Result<Vec<sdk::pricing::Operation>, sdk::PluginError>;
type Fraud = fn(sdk::fraud::Checkout) -> Result<sdk::fraud::Assessment, sdk::PluginError>;
type Step<R> = fn(R) -> Result<sdk::payment::PaymentResult, sdk::payment::PaymentError>;

/// One compiled-in plugin.
#[derive(Clone, Copy)]
pub(crate) enum NativeRule {
    Pricing(Pricing),
    Fraud(Fraud),
    Payment {
        authorize: Step<sdk::payment::AuthorizeRequest>,
        capture: Step<sdk::payment::CaptureRequest>,
        refund: Step<sdk::payment::RefundRequest>,
        void: Step<sdk::payment::VoidRequest>,
    },
}

/// The compiled-in plugin of this name, if there is one.
pub(crate) fn rule(name: &str) -> Option<NativeRule> {
    Some(match name {
        "tiered-discount" => NativeRule::Pricing(tiered_discount::cartridge_native_price),
        "coupon-promotions" => NativeRule::Pricing(coupon_promotions::cartridge_native_price),
        "rules-fraud" => NativeRule::Fraud(rules_fraud::cartridge_native_assess),
        "test-gateway" => NativeRule::Payment {
            authorize: test_gateway::cartridge_native_authorize,
            capture: test_gateway::cartridge_native_capture,
            refund: test_gateway::cartridge_native_refund,
            void: test_gateway::cartridge_native_void,
        },
        _ => return None,
    })
}

/// A value of one side's contract types moved into the other side's: the host's bindings and
/// the SDK's are generated from the same WIT, so each conversion moves fields one to one (the
/// compiler checks every field of the target is given). What a native plugin system would pay
/// to hand the plugin its own types: no serialisation, no allocation beyond the clone the
/// caller makes of an input it keeps.
trait Cross<B> {
    fn cross(self) -> B;
}

macro_rules! same {
    ($($t:ty),*) => {$(
        impl Cross<$t> for $t {
            fn cross(self) -> $t {
                self
            }
        }
    )*};
}
same!(String, bool, u8, u32, u64, i64);

impl<A: Cross<B>, B> Cross<Vec<B>> for Vec<A> {
    fn cross(self) -> Vec<B> {
        self.into_iter().map(Cross::cross).collect()
    }
}

impl<A: Cross<B>, B> Cross<Option<B>> for Option<A> {
    fn cross(self) -> Option<B> {
        self.map(Cross::cross)
    }
}

impl<A: Cross<C>, B: Cross<D>, C, D> Cross<Result<C, D>> for Result<A, B> {
    fn cross(self) -> Result<C, D> {
        self.map(Cross::cross).map_err(Cross::cross)
    }
}

/// Records: `from => to { field, … }`.
macro_rules! records {
    ($($from:ty => $to:path { $($field:ident),* $(,)? })*) => {$(
        impl Cross<$to> for $from {
            fn cross(self) -> $to {
                $to { $($field: self.$field.cross()),* }
            }
        }
    )*};
}

/// Enums and variants: `from => to { Case, Case(payload), … }`.
macro_rules! cases {
    ($($from:ty => $to:ty { $($case:ident $(($value:ident))?),* $(,)? })*) => {$(
        impl Cross<$to> for $from {
            fn cross(self) -> $to {
                match self {
                    $(Self::$case $(($value))? => <$to>::$case $(($value.cross()))?),*
                }
            }
        }
    )*};
}

records! {
    types::Money => sdk::Money { amount, currency }
    sdk::Money => types::Money { amount, currency }
    types::Attribute => sdk::Attribute { name, value }
    types::Address => sdk::Address { name, line1, line2, city, region, postal_code, country }
    sdk::PluginError => types::PluginError { code, message }
    pricing::Cart => sdk::pricing::Cart { id, currency, lines, customer, coupon_codes, shipping, now }
    pricing::CartLine => sdk::pricing::CartLine {
        id, product_id, sku, variant_attributes, categories, quantity, unit_price
    }
    pricing::Customer => sdk::pricing::Customer { id, tags, order_count }
    sdk::pricing::Operation => pricing::Operation { action, label, code, stacking }
    sdk::pricing::LineDiscount => pricing::LineDiscount { line_id, value, quantity }
    sdk::pricing::FixedUnitPrice => pricing::FixedUnitPrice { line_id, unit_price, quantity }
    fraud::Checkout => sdk::fraud::Checkout {
        id, currency, subtotal, discount_total, shipping_total, total, lines, customer,
        billing_address, shipping_address, client_ip, payment, now
    }
    fraud::CheckoutLine => sdk::fraud::CheckoutLine { sku, product_id, quantity, total, categories }
    fraud::Customer => sdk::fraud::Customer { id, email, tags, history }
    fraud::CustomerHistory => sdk::fraud::CustomerHistory {
        order_count, orders_last_24h, failed_payments_last_24h, lifetime_spend, chargebacks,
        first_seen
    }
    fraud::PaymentMethod => sdk::fraud::PaymentMethod {
        kind, brand, last4, issuer_country, fingerprint, metadata
    }
    sdk::fraud::Assessment => fraud::Assessment { score, decision, reasons }
    sdk::fraud::Reason => fraud::Reason { code, message }
    payment::AuthorizeRequest => sdk::payment::AuthorizeRequest {
        operation_id, order_reference, amount, payment_token, customer_email, metadata, now
    }
    payment::CaptureRequest => sdk::payment::CaptureRequest {
        operation_id, gateway_reference, amount, final_capture, now
    }
    payment::RefundRequest => sdk::payment::RefundRequest {
        operation_id, gateway_reference, amount, reason, now
    }
    payment::VoidRequest => sdk::payment::VoidRequest { operation_id, gateway_reference, amount, now }
    sdk::payment::PaymentResult => payment::PaymentResult {
        status, gateway_reference, amount, step_reference
    }
    sdk::payment::PaymentError => payment::PaymentError {
        code, message, gateway_code, gateway_reference
    }
}

cases! {
    sdk::pricing::Action => pricing::Action {
        LineDiscount(d), OrderDiscount(v), FixedUnitPrice(f), FreeShipping
    }
    sdk::pricing::DiscountValue => pricing::DiscountValue { BasisPoints(bp), Amount(m) }
    sdk::pricing::Stacking => pricing::Stacking { Combine, Exclusive, StopAfter }
    sdk::fraud::Decision => fraud::Decision { Allow, Review, Deny }
    sdk::payment::PaymentStatus => payment::PaymentStatus {
        Authorized, RequiresAction, Captured, Voided, Refunded, Pending
    }
    sdk::payment::PaymentErrorCode => payment::PaymentErrorCode {
        Declined, InsufficientFunds, ExpiredCard, IncorrectCvc, FraudSuspected,
        InvalidPaymentMethod, InvalidState, AmountTooLarge, GatewayUnavailable, InvalidRequest
    }
}

/// Runs `rule` on the SDK's copy of `input`, with `config` as the plugin's configuration.
fn run<A: Clone + Cross<B>, B, R>(
    config: &BTreeMap<String, String>,
    input: &A,
    rule: impl FnOnce(B) -> R,
) -> R {
    let input = input.clone().cross();
    sdk::with_config(config, || rule(input))
}

impl NativeRule {
    pub(crate) fn price(
        &self,
        config: &BTreeMap<String, String>,
        cart: &pricing::Cart,
    ) -> Option<Result<pricing::PriceResult, types::PluginError>> {
        let Self::Pricing(price) = self else {
            return None;
        };
        let operations = run(config, cart, price);
        Some(
            operations
                .map(|operations| pricing::PriceResult {
                    operations: operations.cross(),
                })
                .map_err(Cross::cross),
        )
    }

    pub(crate) fn assess(
        &self,
        config: &BTreeMap<String, String>,
        checkout: &fraud::Checkout,
    ) -> Option<Result<fraud::Assessment, types::PluginError>> {
        let Self::Fraud(assess) = self else {
            return None;
        };
        Some(run(config, checkout, assess).cross())
    }

    pub(crate) fn payment(
        &self,
        config: &BTreeMap<String, String>,
        request: &PaymentRequest,
    ) -> Option<Result<payment::PaymentResult, payment::PaymentError>> {
        let Self::Payment {
            authorize,
            capture,
            refund,
            void,
        } = *self
        else {
            return None;
        };
        let result = match request {
            PaymentRequest::Authorize(r) => run(config, r, authorize),
            PaymentRequest::Capture(r) => run(config, r, capture),
            PaymentRequest::Refund(r) => run(config, r, refund),
            PaymentRequest::Void(r) => run(config, r, void),
        };
        Some(result.cross())
    }
}
