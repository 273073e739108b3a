//! # stripe-connector: the Stripe payment connector
//!
//! A payment plugin (`hook = "payment"`, manifest name `stripe`) that turns the host's payment
//! steps into calls to Stripe's API and Stripe's answers back into the contract's results and
//! error codes. It also verifies and decodes Stripe's webhook deliveries.
//!
//! | step            | Stripe call                                                            |
//! |-----------------|------------------------------------------------------------------------|
//! | `authorize`     | `POST /v1/payment_intents` `capture_method=manual`, `confirm=true`, `payment_method=<payment token>` |
//! | `capture`       | `POST /v1/payment_intents/{id}/capture` `amount_to_capture` (`final_capture=false` if not final) |
//! | `refund`        | `POST /v1/refunds` `payment_intent`, `amount` (partial, as many as the host allows) |
//! | `void`          | `POST /v1/payment_intents/{id}/cancel`                                  |
//! | `find` (lookup) | `GET /v1/payment_intents?limit=100`, newest first, paging back to the time the authorisation was sent, matching `metadata[order_reference]` |
//! | `parse-webhook` | no call: `Stripe-Signature` (HMAC-SHA256, 300 s) and the event, see [`webhook`] |
//!
//! A PaymentIntent in `requires_capture` is `authorized`, one in `requires_action` (3-D Secure)
//! is `requires-action`. The gateway reference is the PaymentIntent id; capture and refund
//! steps also report the charge or refund id.
//!
//! **Boundaries.** The connector holds no state and decides nothing about money: the host
//! checks amounts and owns the payment state machine. It needs two capabilities, granted by
//! the operator: `http:api.stripe.com` (or the host of `api-base`) and `secrets`. Its
//! configuration is `api-base` (default `https://api.stripe.com`); its secrets are `api-key`
//! (`sk_…` or `rk_…`) and `webhook-secret` (`whsec_…`), read at each call and never logged.
//!
//! **Idempotency.** Every request carries `Idempotency-Key: cartridge-<operation id>` (or a
//! SHA-256 of an operation id Stripe could not take), so a step the host retries after a
//! timeout is answered by Stripe with the first attempt's result: never a second charge.
//!
//! **Errors.** Stripe's error `code` is kept verbatim as `gateway-code`; ours is derived from it
//! and the `decline_code` (`insufficient_funds`, `expired_card`, `incorrect_cvc`, `fraudulent`
//! …), see [`response`]. 5xx, 429, timeouts and unreachable hosts are `gateway-unavailable`
//! (retry with the same operation id); 401 is `invalid-request` (the key). Messages never
//! contain the payment token, the key or anything shaped like a card number.
//!
//! **Layout.** [`request`] builds each step's HTTP request and [`response`] maps the answer,
//! [`webhook`] verifies and decodes deliveries: all pure, unit-tested natively. The answers
//! they are tested on are in `fixtures/`: `localstripe/` recorded from localstripe 1.15.10
//! (deliveries with their `Stripe-Signature`, secret `whsec_fixture`), `stripe/` written after
//! Stripe's API reference for what localstripe does not do (`amount_received`, decline codes,
//! 3-D Secure, `charge.refunded`). `fixtures/authorize.json` is an input for
//! `cartridge plugin run`. This file is the glue: configuration, secrets, the host's HTTP
//! capability, logging.

pub mod request;
pub mod response;
pub mod webhook;

use cartridge_sdk::http::{self, HttpError};
use cartridge_sdk::log;
use cartridge_sdk::payment::{
    AuthorizeRequest, CaptureRequest, Dispute, FindRequest, Payment, PaymentError,
    PaymentErrorCode, PaymentResult, RefundRequest, VoidRequest, WebhookError, WebhookEvent,
    WebhookRequest,
};
use request::{Settings, StripeRequest};
use response::{Redactor, Scan, Step};
use serde_json::Value;

/// The default of the `api-base` configuration value.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// A lookup pages back this far before the authorisation was sent: the clocks of the host and
/// of Stripe differ.
const LOOKUP_SLACK_SECONDS: i64 = 300;
/// The most pages a lookup reads: 1,000 PaymentIntents created since the authorisation.
const LOOKUP_MAX_PAGES: usize = 10;

struct Stripe;

/// The configuration and secrets a step needs.
fn settings() -> Result<Settings, PaymentError> {
    let api_base = cartridge_sdk::config("api-base").unwrap_or_else(|| DEFAULT_API_BASE.to_owned());
    Settings::new(&api_base, cartridge_sdk::secrets::get("api-key"))
}

/// Why no answer came back, as a payment error. All but a refused request may be retried.
fn transport_error(step: Step, error: &HttpError) -> PaymentError {
    let (code, why) = match error {
        HttpError::Timeout => (PaymentErrorCode::GatewayUnavailable, "timed out".to_owned()),
        HttpError::TooLarge(bytes) => (
            PaymentErrorCode::GatewayUnavailable,
            format!("answered with more than {bytes} bytes"),
        ),
        HttpError::Connection(why) => (
            PaymentErrorCode::GatewayUnavailable,
            format!("could not be reached: {why}"),
        ),
        HttpError::InvalidRequest(why) => (
            PaymentErrorCode::InvalidRequest,
            format!("refused the request: {why}"),
        ),
    };
    PaymentError::new(code, format!("{step:?}: Stripe {why}"))
}

/// Sends `request` and returns Stripe's JSON object, or the mapped error.
fn call(
    step: Step,
    operation_id: &str,
    request: StripeRequest,
    redactor: &Redactor,
) -> Result<Value, PaymentError> {
    let sent = http::send(&http::Request {
        method: request.method.to_owned(),
        url: request.url,
        headers: request.headers,
        body: request.body,
        timeout_ms: None,
    });
    let outcome = match sent {
        Ok(answer) => response::object(step, answer.status, &answer.body, redactor),
        Err(error) => Err(transport_error(step, &error)),
    };
    match &outcome {
        Ok(object) => log::info(&format!(
            "{step:?} {operation_id}: {} {}",
            object.get("id").and_then(Value::as_str).unwrap_or("?"),
            object.get("status").and_then(Value::as_str).unwrap_or("?"),
        )),
        // Error messages are redacted already; the token and the key are never logged.
        Err(error) => log::warn(&format!(
            "{step:?} {operation_id}: {:?} {}",
            error.code, error.message
        )),
    }
    outcome
}

impl Payment for Stripe {
    fn authorize(request: AuthorizeRequest) -> Result<PaymentResult, PaymentError> {
        let settings = settings()?;
        let redactor = Redactor::new([request.payment_token.as_str(), settings.api_key.as_str()]);
        let outgoing = request::authorize(&settings, &request)?;
        let object = call(Step::Authorize, &request.operation_id, outgoing, &redactor)?;
        response::authorized(&object, &request.amount)
    }

    fn capture(request: CaptureRequest) -> Result<PaymentResult, PaymentError> {
        let settings = settings()?;
        let redactor = Redactor::new([settings.api_key.as_str()]);
        let outgoing = request::capture(&settings, &request)?;
        let object = call(Step::Capture, &request.operation_id, outgoing, &redactor)?;
        response::captured(&object, &request.amount)
    }

    fn refund(request: RefundRequest) -> Result<PaymentResult, PaymentError> {
        let settings = settings()?;
        let redactor = Redactor::new([settings.api_key.as_str()]);
        let outgoing = request::refund(&settings, &request)?;
        let object = call(Step::Refund, &request.operation_id, outgoing, &redactor)?;
        response::refunded(&object, &request.gateway_reference, &request.amount)
    }

    fn void(request: VoidRequest) -> Result<PaymentResult, PaymentError> {
        let settings = settings()?;
        let redactor = Redactor::new([settings.api_key.as_str()]);
        let outgoing = request::void(&settings, &request)?;
        let object = call(Step::Void, &request.operation_id, outgoing, &redactor)?;
        response::voided(&object, &request.amount)
    }

    fn find(request: FindRequest) -> Result<Option<PaymentResult>, PaymentError> {
        let settings = settings()?;
        let redactor = Redactor::new([settings.api_key.as_str()]);
        let not_before = request.sent_at.div_euclid(1000) - LOOKUP_SLACK_SECONDS;
        let mut after: Option<String> = None;
        for _ in 0..LOOKUP_MAX_PAGES {
            let outgoing = request::find_page(&settings, after.as_deref())?;
            let page = call(Step::Find, &request.operation_id, outgoing, &redactor)?;
            match response::scan(&page, &request.order_reference, &request.amount, not_before)? {
                Scan::Done(found) => return Ok(found),
                Scan::Next(last) => after = Some(last),
            }
        }
        Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            format!(
                "no PaymentIntent with metadata[order_reference]={} among the {} created since; \
                 look for it in the Stripe dashboard",
                request.order_reference,
                LOOKUP_MAX_PAGES * request::LOOKUP_PAGE
            ),
        ))
    }

    fn parse_webhook(request: WebhookRequest) -> Result<WebhookEvent, WebhookError> {
        webhook::parse(&request, || cartridge_sdk::secrets::get("webhook-secret"))
    }

    fn parse_dispute(request: WebhookRequest) -> Result<Option<Dispute>, WebhookError> {
        webhook::parse_dispute(&request, || cartridge_sdk::secrets::get("webhook-secret"))
    }
}

cartridge_sdk::export_plugin!(payment, Stripe);

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::payment::Money;

    #[test]
    fn without_a_host_there_is_no_api_key_and_nothing_is_sent() {
        // Natively `config` and `secrets::get` answer none: the step stops before any request.
        let error = Stripe::authorize(AuthorizeRequest {
            operation_id: "o1:authorize".into(),
            order_reference: "o1".into(),
            amount: Money::new(5_997, "EUR"),
            payment_token: "pm_card_visa".into(),
            customer_email: None,
            metadata: vec![],
            now: 0,
        })
        .expect_err("no key");
        assert_eq!(error.code, PaymentErrorCode::InvalidRequest);
        assert_eq!(error.message, "the api-key secret is not set");
    }

    #[test]
    fn transport_failures_are_retryable_except_a_refused_request() {
        for (error, code) in [
            (HttpError::Timeout, PaymentErrorCode::GatewayUnavailable),
            (
                HttpError::TooLarge(1 << 20),
                PaymentErrorCode::GatewayUnavailable,
            ),
            (
                HttpError::Connection("connection refused".into()),
                PaymentErrorCode::GatewayUnavailable,
            ),
            (
                HttpError::InvalidRequest("bad url".into()),
                PaymentErrorCode::InvalidRequest,
            ),
        ] {
            let mapped = transport_error(Step::Capture, &error);
            assert_eq!(mapped.code, code, "{error:?}");
            assert!(
                mapped.message.starts_with("Capture: Stripe "),
                "{}",
                mapped.message
            );
            assert_eq!(mapped.gateway_code, None);
        }
    }

    #[test]
    fn a_webhook_without_a_signature_is_refused_without_reading_the_secret() {
        // What the registry's smoke call sends: refused, not a crash.
        let result = Stripe::parse_webhook(WebhookRequest {
            headers: vec![],
            body: vec![],
            now: 0,
        });
        assert!(matches!(result, Err(WebhookError::InvalidSignature(_))));
    }
}
