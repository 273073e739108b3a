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
//! SDK's by their serde forms, which both derive from the one WIT contract; the benchmark
//! counts that conversion against native, as the component boundary's copying is counted
//! against Wasm.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// A value of one side's contract types as the other side's.
fn cross<A: Serialize, B: DeserializeOwned>(value: &A) -> Result<B, String> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("native call: contract types do not match: {e}"))
}

fn answer<A: Serialize, E: Serialize, B: DeserializeOwned, F: DeserializeOwned>(
    result: Result<A, E>,
) -> Result<Result<B, F>, String> {
    Ok(match result {
        Ok(output) => Ok(cross(&output)?),
        Err(error) => Err(cross(&error)?),
    })
}

impl NativeRule {
    pub(crate) fn price(
        &self,
        config: &BTreeMap<String, String>,
        cart: &pricing::Cart,
    ) -> Option<Result<Result<pricing::PriceResult, types::PluginError>, String>> {
        let Self::Pricing(price) = self else {
            return None;
        };
        Some(cross(cart).and_then(|cart| {
            let operations = sdk::with_config(config, || price(cart));
            answer(operations.map(|operations| sdk_price_result(&operations)))
        }))
    }

    pub(crate) fn assess(
        &self,
        config: &BTreeMap<String, String>,
        checkout: &fraud::Checkout,
    ) -> Option<Result<Result<fraud::Assessment, types::PluginError>, String>> {
        let Self::Fraud(assess) = self else {
            return None;
        };
        Some(
            cross(checkout)
                .and_then(|checkout| answer(sdk::with_config(config, || assess(checkout)))),
        )
    }

    pub(crate) fn payment(
        &self,
        config: &BTreeMap<String, String>,
        request: &PaymentRequest,
    ) -> Option<Result<Result<payment::PaymentResult, payment::PaymentError>, String>> {
        let Self::Payment {
            authorize,
            capture,
            refund,
            void,
        } = *self
        else {
            return None;
        };
        Some((|| {
            let result = match request {
                PaymentRequest::Authorize(r) => {
                    let r = cross(r)?;
                    sdk::with_config(config, || authorize(r))
                }
                PaymentRequest::Capture(r) => {
                    let r = cross(r)?;
                    sdk::with_config(config, || capture(r))
                }
                PaymentRequest::Refund(r) => {
                    let r = cross(r)?;
                    sdk::with_config(config, || refund(r))
                }
                PaymentRequest::Void(r) => {
                    let r = cross(r)?;
                    sdk::with_config(config, || void(r))
                }
            };
            answer(result)
        })())
    }
}

/// The pricing world's result record holds the operations; the SDK's trait returns the list.
fn sdk_price_result(operations: &[sdk::pricing::Operation]) -> serde_json::Value {
    serde_json::json!({ "operations": operations })
}
