//! Stripe's answers → our step results and payment errors. Pure: it sees the HTTP status and
//! body, never the network.
//!
//! Stripe's error codes are kept verbatim in `gateway-code`; the message for the operator is
//! Stripe's message with anything secret taken out ([`Redactor`]): Stripe echoes a payment
//! method id in "No such PaymentMethod: 'pm_…'" and part of the key in "Invalid API Key
//! provided: sk_test_…".

use cartridge_sdk::payment::{Money, PaymentError, PaymentErrorCode, PaymentResult, PaymentStatus};
use serde_json::Value;

/// A payment step, for the parts of the mapping that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Create and confirm a PaymentIntent.
    Authorize,
    /// Capture a PaymentIntent.
    Capture,
    /// Create a refund.
    Refund,
    /// Cancel a PaymentIntent.
    Void,
    /// List PaymentIntents, looking for an authorisation whose answer was lost.
    Find,
}

/// The longest message passed on.
const MAX_MESSAGE: usize = 300;
const REDACTED: &str = "[redacted]";

/// Takes secrets out of text that came from Stripe before it reaches a message or a log: the
/// exact values it was given (the payment token, the API key), anything shaped like a Stripe
/// secret or restricted key, and runs of 12 or more digits (card numbers).
#[derive(Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// A redactor for `secrets`; empty ones are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            secrets: secrets
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// `text` with every secret replaced by `[redacted]`, cut to a few hundred characters.
    pub fn clean(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), REDACTED);
        }
        let out = redact_card_numbers(&redact_key_like_words(&text));
        if out.len() <= MAX_MESSAGE {
            return out;
        }
        let mut end = MAX_MESSAGE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &out[..end])
    }
}

/// Words (letters, digits, `_`, `*`) that start like a Stripe secret: `sk_`, `rk_`, `whsec_`.
fn redact_key_like_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if ["sk_", "rk_", "whsec_"].iter().any(|p| word.starts_with(p)) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' || c == '*' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Runs of 12 or more digits, single spaces or dashes allowed between them (a card number
/// written in groups).
fn redact_card_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The run: digits, each separator followed by a digit.
        let (mut end, mut digits) = (i, 0);
        while end < chars.len() {
            if chars[end].is_ascii_digit() {
                digits += 1;
                end += 1;
            } else if matches!(chars[end], ' ' | '-')
                && chars.get(end + 1).is_some_and(char::is_ascii_digit)
            {
                end += 1;
            } else {
                break;
            }
        }
        if digits >= 12 {
            out.push_str(REDACTED);
        } else {
            out.extend(&chars[i..end]);
        }
        i = end;
    }
    out
}

fn error(code: PaymentErrorCode, message: impl Into<String>) -> PaymentError {
    PaymentError::new(code, message)
}

/// The JSON object of a successful (2xx) answer, or the error Stripe (or the way to it) gave.
pub fn object(
    step: Step,
    status: u16,
    body: &[u8],
    redactor: &Redactor,
) -> Result<Value, PaymentError> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        return match parsed {
            Some(value @ Value::Object(_)) => Ok(value),
            // Stripe may have done the step: the retry, under the same key, will tell.
            _ => Err(error(
                PaymentErrorCode::GatewayUnavailable,
                format!("Stripe answered {status} with a body that is not a JSON object"),
            )),
        };
    }
    Err(stripe_error(step, status, parsed.as_ref(), redactor))
}

fn text<'v>(value: &'v Value, name: &str) -> Option<&'v str> {
    value
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The id of an expandable field: either the id itself or an object with one.
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        object @ Value::Object(_) => text(object, "id").map(str::to_owned),
        _ => None,
    }
}

/// Maps an error answer. `body` is Stripe's `{"error": {...}}` when it could be parsed.
pub fn stripe_error(
    step: Step,
    status: u16,
    body: Option<&Value>,
    redactor: &Redactor,
) -> PaymentError {
    let detail = body.and_then(|b| b.get("error")).filter(|e| e.is_object());
    let field = |name: &str| detail.and_then(|d| text(d, name));
    let code = field("code");
    let decline_code = field("decline_code");
    let kind = field("type");
    let ours = classify(step, status, kind, code, decline_code);
    let mut message = format!("Stripe answered {status}");
    if let Some(code) = code {
        message.push_str(&format!(" {code}"));
    }
    if let Some(decline_code) = decline_code {
        message.push_str(&format!(" (decline_code {decline_code})"));
    }
    if let Some(text) = field("message") {
        message.push_str(": ");
        message.push_str(&redactor.clean(text));
    }
    PaymentError {
        code: ours,
        message,
        gateway_code: code.map(str::to_owned),
        // A declined confirmation still created the PaymentIntent: its id is the attempt's.
        gateway_reference: detail.and_then(|d| id_of(d.get("payment_intent"))),
    }
}

fn classify(
    step: Step,
    status: u16,
    kind: Option<&str>,
    code: Option<&str>,
    decline_code: Option<&str>,
) -> PaymentErrorCode {
    use PaymentErrorCode as C;
    if status >= 500 || status == 429 {
        return C::GatewayUnavailable;
    }
    if status == 401 || status == 403 || kind == Some("authentication_error") {
        return C::InvalidRequest;
    }
    // A request with the same key still running at Stripe: retry later with the same key.
    if matches!(
        code,
        Some("idempotency_key_in_use" | "lock_timeout" | "rate_limit")
    ) {
        return C::GatewayUnavailable;
    }
    let decline = |reason: Option<&str>| match reason {
        Some("insufficient_funds") => C::InsufficientFunds,
        Some("expired_card") => C::ExpiredCard,
        Some("incorrect_cvc" | "invalid_cvc") => C::IncorrectCvc,
        Some("fraudulent" | "stolen_card" | "lost_card" | "pickup_card" | "merchant_blacklist") => {
            C::FraudSuspected
        }
        _ => C::Declined,
    };
    match code {
        Some("card_declined") => decline(decline_code),
        Some(
            direct @ ("insufficient_funds" | "expired_card" | "incorrect_cvc" | "invalid_cvc"),
        ) => decline(Some(direct)),
        Some("processing_error") => C::GatewayUnavailable,
        Some("payment_intent_authentication_failure" | "authentication_required") => C::Declined,
        Some(
            "incorrect_number"
            | "invalid_number"
            | "invalid_expiry_month"
            | "invalid_expiry_year"
            | "payment_method_unactivated"
            | "payment_method_unexpected_state"
            | "payment_method_invalid_parameter"
            | "payment_method_not_available"
            | "card_decline_rate_limit_exceeded",
        ) => C::InvalidPaymentMethod,
        Some("resource_missing") if step == Step::Authorize => C::InvalidPaymentMethod,
        Some(
            "payment_intent_unexpected_state"
            | "charge_already_captured"
            | "charge_already_refunded"
            | "charge_expired_for_capture"
            | "charge_disputed",
        ) => C::InvalidState,
        Some("amount_too_large" | "refund_amount_too_large") => C::AmountTooLarge,
        _ if kind == Some("card_error") || status == 402 => decline(decline_code),
        // localstripe answers an unknown payment method with a bare 404.
        None if status == 404 && step == Step::Authorize => C::InvalidPaymentMethod,
        _ => C::InvalidRequest,
    }
}

/// The amount field `name` of a Stripe object, as money in the object's currency.
fn money(object: &Value, name: &str) -> Option<Money> {
    let amount = object.get(name)?.as_u64()?;
    let currency = text(object, "currency")?;
    (currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| Money::new(amount, currency.to_ascii_uppercase()))
}

fn payment_intent_id(object: &Value) -> Result<String, PaymentError> {
    text(object, "id")
        .filter(|id| id.starts_with("pi_"))
        .map(str::to_owned)
        .ok_or_else(|| {
            error(
                PaymentErrorCode::GatewayUnavailable,
                "Stripe's answer is not a PaymentIntent",
            )
        })
}

/// Stripe must not move more than was asked, nor in another currency; the host checks too.
fn within(moved: Option<Money>, asked: &Money) -> Money {
    match moved {
        Some(m) if m.currency == asked.currency && m.amount <= asked.amount => m,
        _ => asked.clone(),
    }
}

fn status(object: &Value) -> &str {
    text(object, "status").unwrap_or("")
}

/// A PaymentIntent that is not where the step should have left it.
fn unexpected(step: Step, object: &Value, id: &str) -> PaymentError {
    let state = status(object);
    let code = match state {
        "requires_payment_method" => {
            // A decline reported in the object rather than as an error.
            let last = object.get("last_payment_error");
            let code = last.and_then(|e| text(e, "code"));
            let decline_code = last.and_then(|e| text(e, "decline_code"));
            let mapped = classify(step, 402, Some("card_error"), code, decline_code);
            return PaymentError {
                code: mapped,
                message: format!("Stripe left PaymentIntent {id} in requires_payment_method"),
                gateway_code: code.map(str::to_owned),
                gateway_reference: Some(id.to_owned()),
            };
        }
        "requires_confirmation" => PaymentErrorCode::InvalidRequest,
        _ => PaymentErrorCode::InvalidState,
    };
    PaymentError {
        code,
        message: format!("after {step:?} Stripe says PaymentIntent {id} is {state:?}"),
        gateway_code: None,
        gateway_reference: Some(id.to_owned()),
    }
}

/// The PaymentIntent an authorisation created.
pub fn authorized(object: &Value, asked: &Money) -> Result<PaymentResult, PaymentError> {
    let id = payment_intent_id(object)?;
    let (state, amount) = match status(object) {
        "requires_capture" => (
            PaymentStatus::Authorized,
            within(
                money(object, "amount_capturable").or_else(|| money(object, "amount")),
                asked,
            ),
        ),
        "requires_action" => (
            PaymentStatus::RequiresAction,
            within(money(object, "amount"), asked),
        ),
        "processing" => (
            PaymentStatus::Pending,
            within(money(object, "amount"), asked),
        ),
        // Captured at once: the account or the intent ignored capture_method=manual.
        "succeeded" => (
            PaymentStatus::Captured,
            within(
                money(object, "amount_received").or_else(|| money(object, "amount")),
                asked,
            ),
        ),
        _ => return Err(unexpected(Step::Authorize, object, &id)),
    };
    Ok(PaymentResult::new(state, id, amount))
}

/// The PaymentIntent after a capture. Stripe reports the running total (`amount_received`);
/// without it (localstripe) the amount asked for is what moved.
pub fn captured(object: &Value, asked: &Money) -> Result<PaymentResult, PaymentError> {
    let id = payment_intent_id(object)?;
    let state = match status(object) {
        // `requires_capture` after a capture that was not final (multicapture).
        "succeeded" | "requires_capture" => PaymentStatus::Captured,
        "processing" => PaymentStatus::Pending,
        _ => return Err(unexpected(Step::Capture, object, &id)),
    };
    let mut result = PaymentResult::new(state, id, within(money(object, "amount_received"), asked));
    if let Some(charge) = id_of(object.get("latest_charge")) {
        result = result.with_step_reference(charge);
    }
    Ok(result)
}

/// The refund Stripe made.
pub fn refunded(
    object: &Value,
    gateway_reference: &str,
    asked: &Money,
) -> Result<PaymentResult, PaymentError> {
    let id = text(object, "id")
        .filter(|id| id.starts_with("re_") || id.starts_with("pyr_"))
        .ok_or_else(|| {
            error(
                PaymentErrorCode::GatewayUnavailable,
                "Stripe's answer is not a Refund",
            )
        })?;
    let state = match status(object) {
        "succeeded" => PaymentStatus::Refunded,
        "pending" | "requires_action" => PaymentStatus::Pending,
        other => {
            let reason = text(object, "failure_reason");
            return Err(PaymentError {
                code: PaymentErrorCode::Declined,
                message: format!("Stripe's refund {id} is {other:?}"),
                gateway_code: reason.map(str::to_owned),
                gateway_reference: Some(gateway_reference.to_owned()),
            });
        }
    };
    Ok(PaymentResult::new(
        state,
        gateway_reference,
        within(money(object, "amount"), asked),
    )
    .with_step_reference(id))
}

/// The PaymentIntent after a cancel: what was authorised is released.
pub fn voided(object: &Value, released: &Money) -> Result<PaymentResult, PaymentError> {
    let id = payment_intent_id(object)?;
    if status(object) != "canceled" {
        return Err(unexpected(Step::Void, object, &id));
    }
    Ok(PaymentResult::new(
        PaymentStatus::Voided,
        id,
        released.clone(),
    ))
}

/// What one page of a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// The search is over: the authorisation's PaymentIntent as it stands (none if it holds
    /// nothing), or none at all.
    Done(Option<PaymentResult>),
    /// Not on this page: ask for the next one, after this id.
    Next(String),
}

/// Looks through one page of `GET /v1/payment_intents` (newest first, as Stripe lists) for the
/// PaymentIntent the authorisation of `order_reference` created (its
/// `metadata[order_reference]`). The search ends at the end of the list, or with a page that
/// reaches back before `not_before` (Unix seconds): the intent cannot be older than that.
pub fn scan(
    page: &Value,
    order_reference: &str,
    asked: &Money,
    not_before: i64,
) -> Result<Scan, PaymentError> {
    let Some(intents) = page.get("data").and_then(Value::as_array) else {
        return Err(error(
            PaymentErrorCode::GatewayUnavailable,
            "Stripe's answer is not a list of PaymentIntents",
        ));
    };
    let ours = |intent: &&Value| {
        intent
            .get("metadata")
            .and_then(|m| text(m, "order_reference"))
            == Some(order_reference)
    };
    if let Some(intent) = intents.iter().find(ours) {
        return found(intent, asked).map(Scan::Done);
    }
    let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
    let last = intents.last();
    let reaches_back = last
        .and_then(|i| i.get("created"))
        .and_then(Value::as_i64)
        .is_some_and(|created| created < not_before);
    match last.and_then(|i| text(i, "id")) {
        Some(id) if more && !reaches_back => Ok(Scan::Next(id.to_owned())),
        _ => Ok(Scan::Done(None)),
    }
}

/// An authorisation's PaymentIntent as it stands; none when it holds nothing.
fn found(intent: &Value, asked: &Money) -> Result<Option<PaymentResult>, PaymentError> {
    let id = payment_intent_id(intent)?;
    match status(intent) {
        "canceled" => Ok(Some(PaymentResult::new(
            PaymentStatus::Voided,
            id,
            within(money(intent, "amount"), asked),
        ))),
        // Declined, or never confirmed: nothing is held.
        "requires_payment_method" | "requires_confirmation" => Ok(None),
        _ => authorized(intent, asked).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded answer: `fixtures/<dir>/<name>.json`.
    macro_rules! fixture {
        ($dir:literal, $name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/",
                $dir,
                "/",
                $name,
                ".json"
            ))
            .as_slice()
        };
    }

    const TOKEN: &str = "pm_secret_token_4242424242424242";
    const KEY: &str = "sk_test_cartridge_unit";

    fn redactor() -> Redactor {
        Redactor::new([TOKEN, KEY])
    }

    fn ok(step: Step, body: &[u8]) -> Value {
        object(step, 200, body, &redactor()).expect("a JSON object")
    }

    fn failed(step: Step, status: u16, body: &[u8]) -> PaymentError {
        object(step, status, body, &redactor()).expect_err("an error")
    }

    fn eur(amount: u64) -> Money {
        Money::new(amount, "EUR")
    }

    #[test]
    fn a_payment_intent_awaiting_capture_is_authorized_for_what_is_capturable() {
        let stripe = ok(
            Step::Authorize,
            fixture!("stripe", "payment_intent_requires_capture"),
        );
        assert_eq!(
            authorized(&stripe, &eur(5_997)).expect("authorized"),
            PaymentResult::new(
                PaymentStatus::Authorized,
                "pi_3QabcDEFghiJKL0m1nOPqrst",
                eur(5_997)
            )
        );
        // localstripe's answer, recorded: no amount_capturable, the charge expanded.
        let local = ok(
            Step::Authorize,
            fixture!("localstripe", "payment_intent_requires_capture"),
        );
        let result = authorized(&local, &eur(5_997)).expect("authorized");
        assert_eq!(result.status, PaymentStatus::Authorized);
        assert_eq!(result.gateway_reference, "pi_SfBNhljvZcBNd3");
        assert_eq!(result.amount, eur(5_997));
    }

    #[test]
    fn three_d_secure_is_requires_action() {
        let pi = ok(
            Step::Authorize,
            fixture!("stripe", "payment_intent_requires_action"),
        );
        let result = authorized(&pi, &eur(5_997)).expect("result");
        assert_eq!(result.status, PaymentStatus::RequiresAction);
        assert_eq!(result.gateway_reference, "pi_3QabcDEFghiJKL0m1nOPqrst");
    }

    #[test]
    fn a_decline_inside_a_200_answer_is_still_a_decline() {
        let pi = ok(
            Step::Authorize,
            fixture!("stripe", "payment_intent_requires_payment_method"),
        );
        let error = authorized(&pi, &eur(5_997)).expect_err("declined");
        assert_eq!(error.code, PaymentErrorCode::InsufficientFunds);
        assert_eq!(error.gateway_code.as_deref(), Some("card_declined"));
        assert_eq!(
            error.gateway_reference.as_deref(),
            Some("pi_3QabcDEFghiJKL0m1nOPqrst")
        );
    }

    #[test]
    fn an_answer_claiming_more_than_was_asked_reports_what_was_asked() {
        let pi = ok(
            Step::Authorize,
            fixture!("stripe", "payment_intent_requires_capture"),
        );
        assert_eq!(authorized(&pi, &eur(100)).expect("ok").amount, eur(100));
        assert_eq!(
            authorized(&pi, &Money::new(5_997, "USD"))
                .expect("ok")
                .amount,
            Money::new(5_997, "USD")
        );
    }

    #[test]
    fn a_capture_reports_stripes_amount_received_and_the_charge() {
        let pi = ok(
            Step::Capture,
            fixture!("stripe", "payment_intent_succeeded_partial"),
        );
        let result = captured(&pi, &eur(3_000)).expect("captured");
        assert_eq!(
            result,
            PaymentResult::new(
                PaymentStatus::Captured,
                "pi_3QabcDEFghiJKL0m1nOPqrst",
                eur(3_000)
            )
            .with_step_reference("ch_3QabcDEFghiJKL0m1aBcDeFg")
        );
        // localstripe has no amount_received: what was asked is what moved.
        let pi = ok(
            Step::Capture,
            fixture!("localstripe", "payment_intent_captured"),
        );
        let result = captured(&pi, &eur(3_000)).expect("captured");
        assert_eq!(result.amount, eur(3_000));
        assert_eq!(result.step_reference.as_deref(), Some("ch_5NlIiU1jREuCVe"));
    }

    #[test]
    fn a_capture_that_left_the_intent_cancelled_is_an_invalid_state() {
        let pi = ok(Step::Capture, fixture!("stripe", "payment_intent_canceled"));
        let error = captured(&pi, &eur(3_000)).expect_err("cancelled");
        assert_eq!(error.code, PaymentErrorCode::InvalidState);
        assert_eq!(
            error.gateway_reference.as_deref(),
            Some("pi_3QabcDEFghiJKL0m1nOPqrst")
        );
    }

    #[test]
    fn refunds_report_the_refund_id_and_wait_when_stripe_is_not_done() {
        let pi = "pi_3QabcDEFghiJKL0m1nOPqrst";
        let refund = ok(Step::Refund, fixture!("stripe", "refund_succeeded"));
        assert_eq!(
            refunded(&refund, pi, &eur(1_000)).expect("refunded"),
            PaymentResult::new(PaymentStatus::Refunded, pi, eur(1_000))
                .with_step_reference("re_3QabcDEFghiJKL0m1RefundAa")
        );
        let pending = ok(Step::Refund, fixture!("stripe", "refund_pending"));
        assert_eq!(
            refunded(&pending, pi, &eur(1_000)).expect("pending").status,
            PaymentStatus::Pending
        );
        let failed_refund = ok(Step::Refund, fixture!("stripe", "refund_failed"));
        let error = refunded(&failed_refund, pi, &eur(1_000)).expect_err("failed");
        assert_eq!(error.code, PaymentErrorCode::Declined);
        assert_eq!(
            error.gateway_code.as_deref(),
            Some("expired_or_canceled_card")
        );
        let local = ok(Step::Refund, fixture!("localstripe", "refund"));
        let result = refunded(&local, "pi_SfBNhljvZcBNd3", &eur(1_000)).expect("refunded");
        assert_eq!(result.amount, eur(1_000));
        assert!(result.step_reference.is_some_and(|r| r.starts_with("re_")));
        // A PaymentIntent where a refund was expected is not taken for one.
        let wrong = ok(Step::Refund, fixture!("stripe", "payment_intent_canceled"));
        assert_eq!(
            refunded(&wrong, pi, &eur(1_000))
                .expect_err("not a refund")
                .code,
            PaymentErrorCode::GatewayUnavailable
        );
    }

    #[test]
    fn a_void_releases_what_was_authorised() {
        let pi = ok(
            Step::Void,
            fixture!("localstripe", "payment_intent_canceled"),
        );
        let result = voided(&pi, &eur(2_000)).expect("voided");
        assert_eq!(result.status, PaymentStatus::Voided);
        assert_eq!(result.amount, eur(2_000));
        let still_open = ok(
            Step::Void,
            fixture!("stripe", "payment_intent_requires_capture"),
        );
        assert_eq!(
            voided(&still_open, &eur(2_000))
                .expect_err("not cancelled")
                .code,
            PaymentErrorCode::InvalidState
        );
    }

    #[test]
    fn stripe_errors_map_to_our_codes_keeping_stripes_code() {
        use PaymentErrorCode as C;
        let pi = Some("pi_3QabcDEFghiJKL0m1nOPqrst");
        /// Step, HTTP status, body; our code, Stripe's code, the reference.
        type Case<'a> = (Step, u16, &'a [u8], C, Option<&'a str>, Option<&'a str>);
        let cases: [Case<'_>; 15] = [
            (
                Step::Authorize,
                402,
                fixture!("stripe", "error_insufficient_funds"),
                C::InsufficientFunds,
                Some("card_declined"),
                pi,
            ),
            (
                Step::Authorize,
                402,
                fixture!("stripe", "error_fraudulent"),
                C::FraudSuspected,
                Some("card_declined"),
                pi,
            ),
            (
                Step::Authorize,
                402,
                fixture!("stripe", "error_generic_decline"),
                C::Declined,
                Some("card_declined"),
                pi,
            ),
            (
                Step::Authorize,
                402,
                fixture!("stripe", "error_expired_card"),
                C::ExpiredCard,
                Some("expired_card"),
                pi,
            ),
            (
                Step::Authorize,
                402,
                fixture!("stripe", "error_incorrect_cvc"),
                C::IncorrectCvc,
                Some("incorrect_cvc"),
                pi,
            ),
            (
                Step::Authorize,
                400,
                fixture!("stripe", "error_resource_missing"),
                C::InvalidPaymentMethod,
                Some("resource_missing"),
                None,
            ),
            (
                Step::Capture,
                404,
                fixture!("stripe", "error_resource_missing"),
                C::InvalidRequest,
                Some("resource_missing"),
                None,
            ),
            (
                Step::Capture,
                400,
                fixture!("stripe", "error_payment_intent_unexpected_state"),
                C::InvalidState,
                Some("payment_intent_unexpected_state"),
                pi,
            ),
            (
                Step::Capture,
                400,
                fixture!("stripe", "error_amount_too_large"),
                C::AmountTooLarge,
                Some("amount_too_large"),
                None,
            ),
            (
                Step::Refund,
                401,
                fixture!("stripe", "error_invalid_api_key"),
                C::InvalidRequest,
                Some("api_key_invalid"),
                None,
            ),
            (
                Step::Void,
                500,
                fixture!("stripe", "error_api_error"),
                C::GatewayUnavailable,
                None,
                None,
            ),
            (
                Step::Authorize,
                409,
                fixture!("stripe", "error_idempotency_key_in_use"),
                C::GatewayUnavailable,
                Some("idempotency_key_in_use"),
                None,
            ),
            // localstripe, recorded: every error typed invalid_request_error, no decline_code.
            (
                Step::Authorize,
                402,
                fixture!("localstripe", "error_card_declined"),
                C::Declined,
                Some("card_declined"),
                None,
            ),
            (
                Step::Authorize,
                404,
                fixture!("localstripe", "error_not_found"),
                C::InvalidPaymentMethod,
                None,
                None,
            ),
            (
                Step::Capture,
                401,
                fixture!("localstripe", "error_unauthorized"),
                C::InvalidRequest,
                None,
                None,
            ),
        ];
        for (i, (step, status, body, code, gateway_code, reference)) in
            cases.into_iter().enumerate()
        {
            let error = failed(step, status, body);
            assert_eq!(error.code, code, "case {i}: {}", error.message);
            assert_eq!(error.gateway_code.as_deref(), gateway_code, "case {i}");
            assert_eq!(error.gateway_reference.as_deref(), reference, "case {i}");
            assert!(
                error
                    .message
                    .starts_with(&format!("Stripe answered {status}")),
                "{}",
                error.message
            );
        }
        let error = failed(
            Step::Authorize,
            402,
            fixture!("stripe", "error_insufficient_funds"),
        );
        assert!(
            error.message.contains("decline_code insufficient_funds"),
            "{}",
            error.message
        );
    }

    #[test]
    fn gateway_failures_without_a_stripe_body_are_retryable_or_refused_by_status() {
        use PaymentErrorCode as C;
        for (status, body, code) in [
            (
                502,
                b"<html>Bad Gateway</html>".as_slice(),
                C::GatewayUnavailable,
            ),
            (503, b"".as_slice(), C::GatewayUnavailable),
            (
                429,
                b"{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"rate_limit\"}}"
                    .as_slice(),
                C::GatewayUnavailable,
            ),
            (403, b"{}".as_slice(), C::InvalidRequest),
            (400, b"[1,2]".as_slice(), C::InvalidRequest),
        ] {
            assert_eq!(failed(Step::Capture, status, body).code, code, "{status}");
        }
        // A 200 we cannot read may have moved money: retry it under the same key.
        for body in [b"not json".as_slice(), b"[]", b""] {
            assert_eq!(
                failed(Step::Authorize, 200, body).code,
                C::GatewayUnavailable
            );
        }
    }

    #[test]
    fn messages_never_carry_the_token_the_key_or_a_card_number() {
        let error = failed(
            Step::Authorize,
            400,
            fixture!("stripe", "error_resource_missing"),
        );
        assert!(!error.message.contains("pm_secret"), "{}", error.message);
        assert!(!error.message.contains("4242"), "{}", error.message);
        assert!(
            error
                .message
                .contains("No such PaymentMethod: '[redacted]'"),
            "{}",
            error.message
        );
        let error = failed(
            Step::Refund,
            401,
            fixture!("stripe", "error_invalid_api_key"),
        );
        assert!(!error.message.contains("sk_test"), "{}", error.message);
        assert!(
            error
                .message
                .ends_with("Invalid API Key provided: [redacted]"),
            "{}",
            error.message
        );

        let r = Redactor::new(["tok_custom", ""]);
        for (text, expected) in [
            (
                "card 4242 4242 4242 4242 was used",
                "card [redacted] was used",
            ),
            ("card 4000-0000-0000-9995.", "card [redacted]."),
            ("pan=5555555555554444&x", "pan=[redacted]&x"),
            ("amount 123456789 of 5997", "amount 123456789 of 5997"),
            ("token tok_custom here", "token [redacted] here"),
            ("rk_live_abc and whsec_xyz", "[redacted] and [redacted]"),
        ] {
            assert_eq!(r.clean(text), expected, "{text}");
        }
        let long = r.clean(&"é".repeat(400));
        assert!(long.len() <= MAX_MESSAGE + '…'.len_utf8() && long.ends_with('…'));
    }

    fn intent(id: &str, order: &str, status: &str, created: i64) -> Value {
        serde_json::json!({
            "id": id, "object": "payment_intent", "amount": 5997, "amount_capturable": 5997,
            "currency": "eur", "status": status, "created": created,
            "metadata": {"order_reference": order},
        })
    }

    fn page(intents: Vec<Value>, has_more: bool) -> Value {
        serde_json::json!({"object": "list", "data": intents, "has_more": has_more})
    }

    #[test]
    fn a_lookup_finds_its_intent_by_order_reference_and_says_what_it_holds() {
        let asked = Money::new(5_997, "EUR");
        let scan_one = |status: &str| {
            let list = page(
                vec![
                    intent("pi_other", "o-2", "requires_capture", 1_000),
                    intent("pi_ours", "o-1", status, 1_000),
                ],
                true,
            );
            scan(&list, "o-1", &asked, 900).expect("a page")
        };
        let authorized = PaymentResult::new(PaymentStatus::Authorized, "pi_ours", asked.clone());
        assert_eq!(scan_one("requires_capture"), Scan::Done(Some(authorized)));
        let Scan::Done(Some(captured)) = scan_one("succeeded") else {
            panic!("found")
        };
        assert_eq!(captured.status, PaymentStatus::Captured);
        let Scan::Done(Some(voided)) = scan_one("canceled") else {
            panic!("found")
        };
        assert_eq!(voided.status, PaymentStatus::Voided);
        // A decline holds nothing.
        assert_eq!(scan_one("requires_payment_method"), Scan::Done(None));
    }

    #[test]
    fn a_lookup_pages_back_until_the_list_ends_or_reaches_before_the_request() {
        let asked = Money::new(5_997, "EUR");
        let newer = page(
            vec![
                intent("pi_3", "o-3", "requires_capture", 1_000),
                intent("pi_2", "o-2", "requires_capture", 950),
            ],
            true,
        );
        assert_eq!(
            scan(&newer, "o-1", &asked, 900),
            Ok(Scan::Next("pi_2".into()))
        );
        let older = page(vec![intent("pi_1", "o-0", "canceled", 899)], true);
        assert_eq!(scan(&older, "o-1", &asked, 900), Ok(Scan::Done(None)));
        let last = page(vec![intent("pi_1", "o-0", "canceled", 950)], false);
        assert_eq!(scan(&last, "o-1", &asked, 900), Ok(Scan::Done(None)));
        assert_eq!(
            scan(&page(vec![], false), "o-1", &asked, 900),
            Ok(Scan::Done(None))
        );
        // Not a list: the gateway cannot tell now.
        let error = scan(
            &serde_json::json!({"object": "payment_intent"}),
            "o-1",
            &asked,
            0,
        )
        .expect_err("not a list");
        assert_eq!(error.code, PaymentErrorCode::GatewayUnavailable);
    }
}
