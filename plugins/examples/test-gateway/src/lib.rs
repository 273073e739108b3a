//! A deterministic **test** payment connector: no network, no gateway, no money. It decides by
//! the payment token alone, in the spirit of Stripe's test tokens, so that checkouts, declines
//! and the payment state machine can be exercised end to end.
//!
//! | token                                   | result                           |
//! |-----------------------------------------|----------------------------------|
//! | `tok_visa`, `tok_mastercard`, `tok_ok…` | authorized                       |
//! | `tok_chargeDeclined`                    | `declined` (`generic_decline`)   |
//! | `tok_chargeDeclinedInsufficientFunds`   | `insufficient-funds`             |
//! | `tok_chargeDeclinedExpiredCard`         | `expired-card`                   |
//! | `tok_chargeDeclinedIncorrectCvc`        | `incorrect-cvc`                  |
//! | `tok_chargeDeclinedFraudulent`          | `fraud-suspected` (`fraudulent`) |
//! | `tok_threeDSecure2Required`             | `requires-action` (a 3-D Secure challenge) |
//! | `tok_gatewayUnavailable`                | `gateway-unavailable` (retry may succeed) |
//! | `tok_partialAuthorization`              | authorized for half the amount   |
//! | empty or anything else                  | `invalid-payment-method`         |
//!
//! Declines carry the gateway's code (in brackets above, Stripe's decline codes) and the
//! payment's reference, as a real gateway records the failed attempt; an unknown token has no
//! reference.
//!
//! The gateway reference is `tg_` followed by the step's operation id, so a retry of the same
//! operation gets the same reference. Capture, refund and void succeed and echo the request
//! (`tg_cap_…` and `tg_ref_…` step references); a void releases the amount it names.
//!
//! **Lookup** (`payment-lookup`, what the host asks about a checkout interrupted after it sent
//! authorize, or about an order whose capture went unanswered). The test gateway keeps no
//! state, so it answers as the operator's `lookup` configuration value says: `held` (the
//! default: an authorisation `tg_<operation id>` for the amount asked), `captured` or `voided`
//! (that payment, captured in full or voided), `nothing` (no payment), `gateway-unavailable`
//! (cannot tell now) or `unsupported` (`invalid-request`, as a connector that cannot look
//! payments up answers).
//!
//! Faults on demand, for testing what a host does when a capture fails: the `capture-fault`
//! configuration value makes every capture answer `gateway-unavailable` (an outcome the host
//! cannot know: the capture may have happened) or `invalid-state` (a definite refusal); empty,
//! the default, captures.
//!
//! **Webhooks.** A delivery must carry a `tg-signature` header `t=<unix seconds>,v1=<hex>`,
//! where `v1` is the 64-bit FNV-1a hash, as 16 hex digits, of `<secret>.<t>.<body>` (`t` as
//! written in the header). The secret is the `webhook-secret` configuration value (default
//! `whsec_test`); `t` must be within 300 seconds of the request's `now`. The body is a flat
//! JSON object:
//!
//! ```json
//! {"id": "evt_1", "type": "payment.captured", "reference": "tg_op1",
//!  "amount": 1000, "currency": "EUR", "created": 1764000000}
//! ```
//!
//! `type` is `payment.authorized`, `.captured`, `.refunded`, `.voided` or `.failed`; any other
//! type is accepted as `other`. `reference`, `amount` and `currency` may be absent; other
//! fields, nested objects and arrays included, are checked for well-formedness and ignored.
//!
//! **Disputes** (`payment-disputes`) come the same way, with `type` `dispute.inquiry`,
//! `.inquiry_closed`, `.opened` (a chargeback), `.won` or `.lost`, and all of `dispute` (the
//! dispute's id), `reference`, `amount`, `currency` and `reason`; `respond_by` (unix seconds,
//! when evidence is due) may be absent:
//!
//! ```json
//! {"id": "evt_2", "type": "dispute.opened", "dispute": "dp_1", "reference": "tg_op1",
//!  "amount": 1000, "currency": "EUR", "reason": "fraudulent", "respond_by": 1764600000,
//!  "created": 1764000000}
//! ```
//!
//! FNV-1a is **not** a cryptographic MAC: every step of it can be undone, so anyone who sees
//! one signed delivery can recover the hash state after the secret and sign whatever they like. It keeps this test connector free of dependencies and its component small.
//! The real Stripe connector will verify HMAC-SHA256 signatures. Never use this one for real
//! payments.

use cartridge_sdk::payment::{
    AuthorizeRequest, CaptureRequest, Dispute, DisputeStatus, FindRequest, Money, Payment,
    PaymentError, PaymentErrorCode, PaymentResult, PaymentStatus, RefundRequest, VoidRequest,
    WebhookError, WebhookEvent, WebhookEventKind, WebhookRequest,
};

struct TestGateway;

const DEFAULT_WEBHOOK_SECRET: &str = "whsec_test";
/// How far a webhook's timestamp may be from `now`, either way.
const TOLERANCE_SECONDS: u64 = 300;
/// Nested JSON deeper than this is refused rather than recursed into.
const MAX_JSON_DEPTH: u32 = 32;

/// Why a token is declined: our code, the gateway's code, the gateway's message.
type Decline = (PaymentErrorCode, &'static str, &'static str);

/// The failure the operator's `capture-fault` configuration asks every capture to answer with.
fn capture_fault() -> Option<PaymentError> {
    let (code, message) = match cartridge_sdk::config("capture-fault")?.as_str() {
        "gateway-unavailable" => (
            PaymentErrorCode::GatewayUnavailable,
            "The gateway timed out; the capture may or may not have happened.",
        ),
        "invalid-state" => (
            PaymentErrorCode::InvalidState,
            "This authorization can no longer be captured.",
        ),
        _ => return None,
    };
    Some(PaymentError {
        code,
        message: message.to_owned(),
        gateway_code: None,
        gateway_reference: None,
    })
}

/// What the test gateway does with `token`: `Ok` authorises.
fn decide(token: &str) -> Result<(), Decline> {
    match token {
        "tok_visa" | "tok_mastercard" => Ok(()),
        _ if token.starts_with("tok_ok") => Ok(()),
        "tok_chargeDeclined" => Err((
            PaymentErrorCode::Declined,
            "generic_decline",
            "Your card was declined.",
        )),
        "tok_chargeDeclinedInsufficientFunds" => Err((
            PaymentErrorCode::InsufficientFunds,
            "insufficient_funds",
            "Your card has insufficient funds.",
        )),
        "tok_chargeDeclinedExpiredCard" => Err((
            PaymentErrorCode::ExpiredCard,
            "expired_card",
            "Your card has expired.",
        )),
        "tok_chargeDeclinedIncorrectCvc" => Err((
            PaymentErrorCode::IncorrectCvc,
            "incorrect_cvc",
            "Your card's security code is incorrect.",
        )),
        "tok_gatewayUnavailable" => Err((
            PaymentErrorCode::GatewayUnavailable,
            "api_connection_error",
            "The gateway could not be reached.",
        )),
        "tok_chargeDeclinedFraudulent" => Err((
            PaymentErrorCode::FraudSuspected,
            "fraudulent",
            "Your card was declined.",
        )),
        _ => Err((
            PaymentErrorCode::InvalidPaymentMethod,
            "resource_missing",
            "No such token.",
        )),
    }
}

/// The payment's reference: the same for every retry of the operation.
fn reference(operation_id: &str) -> String {
    format!("tg_{operation_id}")
}

/// Capture, refund and void need the reference authorize gave; an empty one is a host bug.
fn require_reference(gateway_reference: &str) -> Result<(), PaymentError> {
    if gateway_reference.is_empty() {
        return Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            "no gateway reference",
        ));
    }
    Ok(())
}

impl Payment for TestGateway {
    fn authorize(request: AuthorizeRequest) -> Result<PaymentResult, PaymentError> {
        if request.payment_token == "tok_partialAuthorization" {
            // A prepaid card with less on it than the total: the issuer holds what there is.
            return Ok(PaymentResult {
                status: PaymentStatus::Authorized,
                gateway_reference: reference(&request.operation_id),
                amount: Money::new(request.amount.amount / 2, request.amount.currency),
                step_reference: None,
            });
        }
        if request.payment_token == "tok_threeDSecure2Required" {
            // The card needs a 3-D Secure challenge before anything is held.
            return Ok(PaymentResult {
                status: PaymentStatus::RequiresAction,
                gateway_reference: reference(&request.operation_id),
                amount: request.amount,
                step_reference: None,
            });
        }
        match decide(&request.payment_token) {
            Ok(()) => Ok(PaymentResult {
                status: PaymentStatus::Authorized,
                gateway_reference: reference(&request.operation_id),
                amount: request.amount,
                step_reference: None,
            }),
            Err((code, gateway_code, message)) => {
                // A decline is a charge attempt the gateway records; an unknown token is not.
                let declined = code != PaymentErrorCode::InvalidPaymentMethod;
                let message = if request.payment_token.is_empty() {
                    "No payment token.".to_owned()
                } else if declined {
                    message.to_owned()
                } else {
                    format!("No such token: '{}'.", request.payment_token)
                };
                Err(PaymentError {
                    code,
                    message,
                    gateway_code: Some(gateway_code.to_owned()),
                    gateway_reference: declined.then(|| reference(&request.operation_id)),
                })
            }
        }
    }

    fn capture(request: CaptureRequest) -> Result<PaymentResult, PaymentError> {
        require_reference(&request.gateway_reference)?;
        if let Some(fault) = capture_fault() {
            return Err(fault);
        }
        Ok(PaymentResult {
            status: PaymentStatus::Captured,
            step_reference: Some(format!("tg_cap_{}", request.operation_id)),
            gateway_reference: request.gateway_reference,
            amount: request.amount,
        })
    }

    fn refund(request: RefundRequest) -> Result<PaymentResult, PaymentError> {
        require_reference(&request.gateway_reference)?;
        Ok(PaymentResult {
            status: PaymentStatus::Refunded,
            step_reference: Some(format!("tg_ref_{}", request.operation_id)),
            gateway_reference: request.gateway_reference,
            amount: request.amount,
        })
    }

    fn void(request: VoidRequest) -> Result<PaymentResult, PaymentError> {
        require_reference(&request.gateway_reference)?;
        Ok(PaymentResult {
            status: PaymentStatus::Voided,
            gateway_reference: request.gateway_reference,
            amount: request.amount,
            step_reference: None,
        })
    }

    fn find(request: FindRequest) -> Result<Option<PaymentResult>, PaymentError> {
        let lookup = cartridge_sdk::config("lookup").unwrap_or_default();
        find(&lookup, request)
    }

    fn parse_webhook(request: WebhookRequest) -> Result<WebhookEvent, WebhookError> {
        parse_webhook(&request, &webhook_secret())
    }

    fn parse_dispute(request: WebhookRequest) -> Result<Option<Dispute>, WebhookError> {
        parse_dispute(&request, &webhook_secret())
    }
}

/// The operator's `webhook-secret`, or the default.
fn webhook_secret() -> String {
    cartridge_sdk::config("webhook-secret").unwrap_or_else(|| DEFAULT_WEBHOOK_SECRET.to_owned())
}

cartridge_sdk::export_plugin!(payment, TestGateway);

/// What a lookup answers under the `lookup` configuration value (see the crate's docs).
fn find(lookup: &str, request: FindRequest) -> Result<Option<PaymentResult>, PaymentError> {
    match lookup {
        "" | "held" => Ok(Some(PaymentResult {
            status: PaymentStatus::Authorized,
            gateway_reference: reference(&request.operation_id),
            amount: request.amount,
            step_reference: None,
        })),
        "captured" | "voided" => Ok(Some(PaymentResult {
            status: if lookup == "captured" {
                PaymentStatus::Captured
            } else {
                PaymentStatus::Voided
            },
            gateway_reference: reference(&request.operation_id),
            amount: request.amount,
            step_reference: None,
        })),
        "nothing" => Ok(None),
        "gateway-unavailable" => Err(PaymentError::new(
            PaymentErrorCode::GatewayUnavailable,
            "The gateway could not be reached.",
        )),
        _ => Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            "This gateway cannot look payments up.",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// 64-bit FNV-1a over the concatenation of `parts`.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The `v1` signature of a delivery: 16 lower-case hex digits.
fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "{:016x}",
        fnv1a64(&[secret.as_bytes(), b".", timestamp.as_bytes(), b".", body])
    )
}

fn invalid_signature(message: impl Into<String>) -> WebhookError {
    WebhookError::InvalidSignature(message.into())
}

fn malformed(message: impl Into<String>) -> WebhookError {
    WebhookError::Malformed(message.into())
}

/// Checks the `tg-signature` header of `request` against `secret`.
fn verify(request: &WebhookRequest, secret: &str) -> Result<(), WebhookError> {
    let header = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("tg-signature"))
        .map(|(_, value)| value.as_str())
        .ok_or_else(|| invalid_signature("no tg-signature header"))?;

    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            return Err(invalid_signature(format!(
                "tg-signature: '{part}' is not key=value"
            )));
        };
        match key {
            "t" if timestamp.is_some() => {
                return Err(invalid_signature("tg-signature: more than one t"));
            }
            "t" => timestamp = Some(value),
            "v1" => candidates.push(value),
            _ => {} // other schemes, for later versions
        }
    }
    let timestamp = timestamp.ok_or_else(|| invalid_signature("tg-signature: no t"))?;
    if candidates.is_empty() {
        return Err(invalid_signature("tg-signature: no v1 signature"));
    }
    let seconds = parse_unsigned(timestamp)
        .and_then(|t| i64::try_from(t).ok())
        .ok_or_else(|| {
            invalid_signature(format!("tg-signature: t={timestamp} is not a unix time"))
        })?;
    let now = request.now.div_euclid(1000);
    if now.abs_diff(seconds) > TOLERANCE_SECONDS {
        return Err(invalid_signature(format!(
            "tg-signature: t={seconds} is more than {TOLERANCE_SECONDS} s from now ({now})"
        )));
    }
    let expected = signature(secret, timestamp, &request.body);
    if !candidates
        .iter()
        .any(|candidate| candidate.eq_ignore_ascii_case(&expected))
    {
        return Err(invalid_signature("tg-signature: no v1 signature matches"));
    }
    Ok(())
}

/// Verifies a delivery and decodes its event.
fn parse_webhook(request: &WebhookRequest, secret: &str) -> Result<WebhookEvent, WebhookError> {
    event(verified_body(request, secret)?)
}

/// Verifies a delivery and reads its dispute, if it reports one.
fn parse_dispute(request: &WebhookRequest, secret: &str) -> Result<Option<Dispute>, WebhookError> {
    dispute(verified_body(request, secret)?)
}

/// The body of a delivery whose signature verifies.
fn verified_body<'r>(request: &'r WebhookRequest, secret: &str) -> Result<&'r str, WebhookError> {
    verify(request, secret)?;
    std::str::from_utf8(&request.body).map_err(|_| malformed("body is not UTF-8"))
}

/// A decimal number without sign, fraction or exponent.
fn parse_unsigned(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A verified body's top-level fields.
struct Fields<'a>(Vec<(String, Value<'a>)>);

impl<'a> Fields<'a> {
    fn of(body: &'a str) -> Result<Self, WebhookError> {
        Json::new(body)
            .top_level_object()
            .map(Fields)
            .map_err(malformed)
    }

    fn get(&self, name: &str) -> Option<&Value<'a>> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    fn text(&self, name: &str) -> Result<Option<String>, WebhookError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Text(text)) => Ok(Some(text.clone())),
            Some(_) => Err(malformed(format!("{name} must be a string"))),
        }
    }

    fn number(&self, name: &str) -> Result<Option<u64>, WebhookError> {
        match self.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => parse_unsigned(n)
                .map(Some)
                .ok_or_else(|| malformed(format!("{name} must be a whole number, not {n}"))),
            Some(_) => Err(malformed(format!("{name} must be a number"))),
        }
    }

    /// `id`, which every event has.
    fn event_id(&self) -> Result<String, WebhookError> {
        self.text("id")?
            .filter(|id| !id.is_empty())
            .ok_or_else(|| malformed("no event id"))
    }

    /// `amount` in `currency`, when there is an amount.
    fn amount(&self) -> Result<Option<Money>, WebhookError> {
        match (self.number("amount")?, self.text("currency")?) {
            (None, _) => Ok(None),
            (Some(amount), Some(currency))
                if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                Ok(Some(Money::new(amount, currency)))
            }
            (Some(_), Some(currency)) => Err(malformed(format!(
                "currency '{currency}' is not an ISO 4217 code"
            ))),
            (Some(_), None) => Err(malformed("an amount without a currency")),
        }
    }

    /// `created` (unix seconds), in milliseconds.
    fn created(&self) -> Result<i64, WebhookError> {
        self.millis("created")?
            .ok_or_else(|| malformed("no created time"))
    }

    /// A time in unix seconds, in milliseconds, if present.
    fn millis(&self, name: &str) -> Result<Option<i64>, WebhookError> {
        self.number(name)?
            .map(|seconds| {
                i64::try_from(seconds)
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .ok_or_else(|| malformed(format!("{name} is out of range")))
            })
            .transpose()
    }
}

/// Decodes the event in a verified body.
fn event(body: &str) -> Result<WebhookEvent, WebhookError> {
    let fields = Fields::of(body)?;
    let event_id = fields.event_id()?;
    let kind = match fields.text("type")?.as_deref() {
        Some("payment.authorized") => WebhookEventKind::Authorized,
        Some("payment.captured") => WebhookEventKind::Captured,
        Some("payment.refunded") => WebhookEventKind::Refunded,
        Some("payment.voided") => WebhookEventKind::Voided,
        Some("payment.failed") => WebhookEventKind::Failed,
        Some(_) => WebhookEventKind::Other,
        None => return Err(malformed("no event type")),
    };
    Ok(WebhookEvent {
        event_id,
        kind,
        gateway_reference: fields.text("reference")?.filter(|r| !r.is_empty()),
        amount: fields.amount()?,
        occurred_at: fields.created()?,
    })
}

/// Decodes the dispute in a verified body; none if it reports something else.
fn dispute(body: &str) -> Result<Option<Dispute>, WebhookError> {
    let fields = Fields::of(body)?;
    let status = match fields.text("type")?.as_deref() {
        Some("dispute.inquiry") => DisputeStatus::Inquiry,
        Some("dispute.inquiry_closed") => DisputeStatus::InquiryClosed,
        Some("dispute.opened") => DisputeStatus::Open,
        Some("dispute.won") => DisputeStatus::Won,
        Some("dispute.lost") => DisputeStatus::Lost,
        Some(_) => return Ok(None),
        None => return Err(malformed("no event type")),
    };
    let required = |name: &str| {
        fields
            .text(name)?
            .filter(|value| !value.is_empty())
            .ok_or_else(|| malformed(format!("a dispute event needs {name}")))
    };
    Ok(Some(Dispute {
        event_id: fields.event_id()?,
        dispute_id: required("dispute")?,
        gateway_reference: required("reference")?,
        amount: fields
            .amount()?
            .ok_or_else(|| malformed("a dispute event needs an amount"))?,
        status,
        reason: required("reason")?,
        respond_by: fields.millis("respond_by")?,
        occurred_at: fields.created()?,
    }))
}

/// A top-level field's value, as far as this connector cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value<'a> {
    Text(String),
    /// The number as written; checked where it is used.
    Number(&'a str),
    Null,
    /// `true`, `false`, an object or an array: well-formed, skipped.
    Other,
}

/// Just enough of a JSON reader for one object of scalar fields. Nested objects and arrays are
/// checked for well-formedness and skipped.
struct Json<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Json<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn error<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("invalid JSON at byte {}: {what}", self.at))
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_whitespace();
        if self.peek() != Some(byte) {
            return self.error(&format!("expected '{}'", char::from(byte)));
        }
        self.at += 1;
        Ok(())
    }

    /// The whole text as one object; duplicate keys are refused.
    fn top_level_object(mut self) -> Result<Vec<(String, Value<'a>)>, String> {
        let mut fields: Vec<(String, Value<'a>)> = Vec::new();
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.skip_whitespace();
                let key = self.string(true)?;
                self.expect(b':')?;
                let value = self.value(1)?;
                if fields.iter().any(|(k, _)| *k == key) {
                    return Err(format!("duplicate field '{key}'"));
                }
                fields.push((key, value));
                self.skip_whitespace();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        break;
                    }
                    _ => return self.error("expected ',' or '}'"),
                }
            }
        }
        self.skip_whitespace();
        if self.at != self.text.len() {
            return self.error("text after the object");
        }
        Ok(fields)
    }

    fn value(&mut self, depth: u32) -> Result<Value<'a>, String> {
        if depth > MAX_JSON_DEPTH {
            return self.error("nested too deeply");
        }
        self.skip_whitespace();
        match self.peek() {
            // Only top-level values are kept; nested ones are checked and dropped unallocated.
            Some(b'"') => self.string(depth == 1).map(Value::Text),
            Some(b'{') => self.container(b'}', depth, true),
            Some(b'[') => self.container(b']', depth, false),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.at;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.at += 1;
                }
                Ok(Value::Number(&self.text[start..self.at]))
            }
            _ => {
                for (word, value) in [
                    ("null", Value::Null),
                    ("true", Value::Other),
                    ("false", Value::Other),
                ] {
                    if self.text[self.at..].starts_with(word) {
                        self.at += word.len();
                        return Ok(value);
                    }
                }
                self.error("expected a value")
            }
        }
    }

    /// Skips an object (`keyed`) or array, checking that it is well-formed.
    fn container(&mut self, close: u8, depth: u32, keyed: bool) -> Result<Value<'a>, String> {
        self.at += 1; // the opening bracket
        self.skip_whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(Value::Other);
        }
        loop {
            if keyed {
                self.skip_whitespace();
                self.string(false)?;
                self.expect(b':')?;
            }
            self.value(depth + 1)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(byte) if byte == close => {
                    self.at += 1;
                    return Ok(Value::Other);
                }
                _ => return self.error("expected ',' or a closing bracket"),
            }
        }
    }

    /// A string, unescaped; or checked and dropped (an empty result) unless `keep`.
    fn string(&mut self, keep: bool) -> Result<String, String> {
        if self.peek() != Some(b'"') {
            return self.error("expected a string");
        }
        self.at += 1;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote or backslash as it is: the text is UTF-8 and
            // both delimiters are ASCII, so the run ends on a character boundary. A byte loop
            // costs the fewest instructions (and so the least fuel) per byte.
            let start = self.at;
            while let Some(byte) = self.peek() {
                match byte {
                    b'"' | b'\\' => break,
                    0..=0x1f => return self.error("control character in a string"),
                    _ => self.at += 1,
                }
            }
            if keep {
                out.push_str(&self.text[start..self.at]);
            }
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let letter = self.text.as_bytes().get(self.at + 1).copied();
                    self.at += 2; // the backslash and the letter
                    let escaped = match letter {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape()?,
                        _ => return self.error("unknown escape"),
                    };
                    if keep {
                        out.push(escaped);
                    }
                }
                _ => return self.error("unterminated string"),
            }
        }
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(digits) = digits else {
            return self.error("expected four hex digits");
        };
        self.at += 4;
        u32::from_str_radix(digits, 16).map_err(|e| e.to_string())
    }

    /// The character of a `\u` escape, joining a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.text[self.at..].starts_with("\\u") {
                    return self.error("unpaired surrogate");
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return self.error("unpaired surrogate");
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return self.error("unpaired surrogate"),
            code => code,
        };
        char::from_u32(code).map_or_else(|| self.error("invalid \\u escape"), Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::payment::Attribute;

    const NOW_MS: i64 = 1_764_000_100_000;
    const T: &str = "1764000000";

    fn authorize(token: &str) -> Result<PaymentResult, PaymentError> {
        TestGateway::authorize(AuthorizeRequest {
            operation_id: "op_1".into(),
            order_reference: "order-1001".into(),
            amount: Money::new(4_990, "EUR"),
            payment_token: token.into(),
            customer_email: Some("alex@example.com".into()),
            metadata: vec![Attribute::new("cart", "cart-7f3a")],
            now: NOW_MS,
        })
    }

    fn declined(token: &str) -> PaymentError {
        authorize(token).expect_err("declined")
    }

    const EVENT: &str = r#"{"id":"evt_1","type":"payment.captured","reference":"tg_op1","amount":1000,"currency":"EUR","created":1764000000}"#;

    fn delivery(body: &str, header: &str) -> WebhookRequest {
        WebhookRequest {
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("tg-signature".into(), header.into()),
            ],
            body: body.as_bytes().to_vec(),
            now: NOW_MS,
        }
    }

    /// A delivery of `body` signed at `T` with the default secret.
    fn signed(body: &str) -> WebhookRequest {
        let v1 = signature(DEFAULT_WEBHOOK_SECRET, T, body.as_bytes());
        delivery(body, &format!("t={T},v1={v1}"))
    }

    fn parsed(body: &str) -> Result<WebhookEvent, WebhookError> {
        parse_webhook(&signed(body), DEFAULT_WEBHOOK_SECRET)
    }

    fn rejected_signature(request: &WebhookRequest) -> String {
        match parse_webhook(request, DEFAULT_WEBHOOK_SECRET) {
            Err(WebhookError::InvalidSignature(message)) => message,
            other => panic!("expected an invalid signature, got {other:?}"),
        }
    }

    fn malformed_body(body: &str) -> String {
        match parsed(body) {
            Err(WebhookError::Malformed(message)) => message,
            other => panic!("expected a malformed body, got {other:?}"),
        }
    }

    #[test]
    fn a_three_d_secure_card_requires_action_and_holds_nothing_yet() {
        let result = authorize("tok_threeDSecure2Required").expect("answered");
        assert_eq!(result.status, PaymentStatus::RequiresAction);
        assert_eq!(result.gateway_reference, "tg_op_1");
    }

    #[test]
    fn visa_mastercard_and_tok_ok_tokens_are_authorized() {
        for token in ["tok_visa", "tok_mastercard", "tok_ok", "tok_ok_anything"] {
            let result = authorize(token).expect(token);
            assert_eq!(result.status, PaymentStatus::Authorized);
            assert_eq!(result.gateway_reference, "tg_op_1");
            assert_eq!(result.amount, Money::new(4_990, "EUR"));
            assert_eq!(result.step_reference, None);
        }
    }

    #[test]
    fn a_lookup_answers_as_configured_and_finds_what_authorize_would_have_made() {
        let request = || FindRequest {
            operation_id: "op_1".into(),
            order_reference: "order-1001".into(),
            amount: Money::new(4_990, "EUR"),
            sent_at: NOW_MS,
            now: NOW_MS + 600_000,
        };
        let held = authorize("tok_visa").expect("authorized");
        for lookup in ["", "held"] {
            assert_eq!(
                find(lookup, request()),
                Ok(Some(held.clone())),
                "{lookup:?}"
            );
        }
        let Ok(Some(captured)) = find("captured", request()) else {
            panic!("found");
        };
        assert_eq!(
            (captured.status, captured.amount),
            (PaymentStatus::Captured, held.amount.clone())
        );
        let Ok(Some(voided)) = find("voided", request()) else {
            panic!("found");
        };
        assert_eq!(voided.status, PaymentStatus::Voided);
        assert_eq!(find("nothing", request()), Ok(None));
        assert_eq!(
            find("gateway-unavailable", request()).map_err(|e| e.code),
            Err(PaymentErrorCode::GatewayUnavailable)
        );
        assert_eq!(
            find("unsupported", request()).map_err(|e| e.code),
            Err(PaymentErrorCode::InvalidRequest)
        );
    }

    #[test]
    fn a_retry_of_the_same_operation_gets_the_same_reference() {
        let first = authorize("tok_visa").expect("authorized");
        let retry = authorize("tok_visa").expect("authorized");
        assert_eq!(first, retry);
    }

    #[test]
    fn decline_tokens_map_to_their_error_codes() {
        for (token, code, gateway_code) in [
            (
                "tok_chargeDeclined",
                PaymentErrorCode::Declined,
                "generic_decline",
            ),
            (
                "tok_chargeDeclinedInsufficientFunds",
                PaymentErrorCode::InsufficientFunds,
                "insufficient_funds",
            ),
            (
                "tok_chargeDeclinedExpiredCard",
                PaymentErrorCode::ExpiredCard,
                "expired_card",
            ),
            (
                "tok_chargeDeclinedIncorrectCvc",
                PaymentErrorCode::IncorrectCvc,
                "incorrect_cvc",
            ),
            (
                "tok_chargeDeclinedFraudulent",
                PaymentErrorCode::FraudSuspected,
                "fraudulent",
            ),
        ] {
            let error = declined(token);
            assert_eq!(error.code, code, "{token}");
            assert_eq!(error.gateway_code.as_deref(), Some(gateway_code), "{token}");
            assert_eq!(
                error.gateway_reference.as_deref(),
                Some("tg_op_1"),
                "{token}"
            );
            assert!(!error.message.is_empty());
        }
    }

    #[test]
    fn empty_and_unknown_tokens_are_invalid_payment_methods_without_a_reference() {
        for token in [
            "",
            "tok_amex",
            "TOK_VISA",
            "4242424242424242",
            "tok_chargeDeclinedSomehow",
        ] {
            let error = declined(token);
            assert_eq!(
                error.code,
                PaymentErrorCode::InvalidPaymentMethod,
                "{token:?}"
            );
            assert_eq!(error.gateway_reference, None, "{token:?}");
        }
        assert_eq!(declined("").message, "No payment token.");
        assert_eq!(declined("tok_amex").message, "No such token: 'tok_amex'.");
    }

    #[test]
    fn a_configured_capture_fault_is_answered_until_it_is_cleared() {
        let capture = || {
            TestGateway::capture(CaptureRequest {
                operation_id: "op_2".into(),
                gateway_reference: "tg_op_1".into(),
                amount: Money::new(3_000, "EUR"),
                final_capture: true,
                now: NOW_MS,
            })
        };
        for (fault, code) in [
            ("gateway-unavailable", PaymentErrorCode::GatewayUnavailable),
            ("invalid-state", PaymentErrorCode::InvalidState),
        ] {
            let config = [("capture-fault".to_owned(), fault.to_owned())].into();
            let error = cartridge_sdk::with_config(&config, capture).expect_err(fault);
            assert_eq!(error.code, code);
        }
        let cleared = [("capture-fault".to_owned(), String::new())].into();
        assert!(cartridge_sdk::with_config(&cleared, capture).is_ok());
    }

    #[test]
    fn capture_echoes_the_amount_with_a_capture_reference() {
        let result = TestGateway::capture(CaptureRequest {
            operation_id: "op_2".into(),
            gateway_reference: "tg_op_1".into(),
            amount: Money::new(3_000, "EUR"),
            final_capture: false,
            now: NOW_MS,
        })
        .expect("captured");
        assert_eq!(
            result,
            PaymentResult {
                status: PaymentStatus::Captured,
                gateway_reference: "tg_op_1".into(),
                amount: Money::new(3_000, "EUR"),
                step_reference: Some("tg_cap_op_2".into()),
            }
        );
    }

    #[test]
    fn refund_echoes_the_amount_with_a_refund_reference() {
        let result = TestGateway::refund(RefundRequest {
            operation_id: "op_3".into(),
            gateway_reference: "tg_op_1".into(),
            amount: Money::new(1_000, "EUR"),
            reason: Some("damaged".into()),
            now: NOW_MS,
        })
        .expect("refunded");
        assert_eq!(result.status, PaymentStatus::Refunded);
        assert_eq!(result.gateway_reference, "tg_op_1");
        assert_eq!(result.amount, Money::new(1_000, "EUR"));
        assert_eq!(result.step_reference.as_deref(), Some("tg_ref_op_3"));
    }

    #[test]
    fn void_releases_the_amount_it_names() {
        let result = TestGateway::void(VoidRequest {
            operation_id: "op_4".into(),
            gateway_reference: "tg_op_1".into(),
            amount: Money::new(2500, "EUR"),
            now: NOW_MS,
        })
        .expect("voided");
        assert_eq!(result.status, PaymentStatus::Voided);
        assert_eq!(result.gateway_reference, "tg_op_1");
        assert_eq!(result.amount, Money::new(2500, "EUR"));
    }

    #[test]
    fn a_step_without_a_gateway_reference_is_an_invalid_request() {
        let error = TestGateway::void(VoidRequest {
            operation_id: "op_4".into(),
            gateway_reference: String::new(),
            amount: Money::new(2500, "EUR"),
            now: NOW_MS,
        })
        .expect_err("no reference");
        assert_eq!(error.code, PaymentErrorCode::InvalidRequest);
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foobar"]), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(&[b"foo", b"", b"bar"]), fnv1a64(&[b"foobar"]));
        assert_eq!(
            signature("s", "1", b"{}"),
            format!("{:016x}", fnv1a64(&[b"s.1.{}"]))
        );
    }

    #[test]
    fn a_correctly_signed_webhook_is_decoded() {
        let event = TestGateway::parse_webhook(signed(EVENT)).expect("verified");
        assert_eq!(
            event,
            WebhookEvent {
                event_id: "evt_1".into(),
                kind: WebhookEventKind::Captured,
                gateway_reference: Some("tg_op1".into()),
                amount: Some(Money::new(1000, "EUR")),
                occurred_at: 1_764_000_000_000,
            }
        );
    }

    const DISPUTE: &str = r#"{"id":"evt_9","type":"dispute.opened","dispute":"dp_1","reference":"tg_op1","amount":1000,"currency":"EUR","reason":"fraudulent","created":1764000000}"#;

    #[test]
    fn a_dispute_is_read_and_is_other_to_parse_webhook() {
        assert_eq!(
            TestGateway::parse_dispute(signed(DISPUTE)).expect("verified"),
            Some(Dispute {
                event_id: "evt_9".into(),
                dispute_id: "dp_1".into(),
                gateway_reference: "tg_op1".into(),
                amount: Money::new(1000, "EUR"),
                status: DisputeStatus::Open,
                reason: "fraudulent".into(),
                respond_by: None,
                occurred_at: 1_764_000_000_000,
            })
        );
        let event = TestGateway::parse_webhook(signed(DISPUTE)).expect("verified");
        assert_eq!(event.kind, WebhookEventKind::Other);
        assert_eq!(TestGateway::parse_dispute(signed(EVENT)), Ok(None));
    }

    #[test]
    fn a_dispute_needs_its_id_reference_amount_and_reason_and_a_signature() {
        for missing in [
            r#""dispute":"dp_1","#,
            r#""reference":"tg_op1","#,
            r#""reason":"fraudulent","#,
        ] {
            let body = DISPUTE.replace(missing, "");
            assert!(
                matches!(
                    TestGateway::parse_dispute(signed(&body)),
                    Err(WebhookError::Malformed(_))
                ),
                "{body}"
            );
        }
        let body = DISPUTE.replace(r#""amount":1000,"#, "");
        assert!(matches!(
            TestGateway::parse_dispute(signed(&body)),
            Err(WebhookError::Malformed(_))
        ));
        let mut forged = signed(DISPUTE);
        forged.body = DISPUTE.replace("1000", "1").into_bytes();
        assert!(matches!(
            TestGateway::parse_dispute(forged),
            Err(WebhookError::InvalidSignature(_))
        ));
    }

    #[test]
    fn a_webhook_without_the_header_is_refused() {
        let mut request = signed(EVENT);
        request.headers.retain(|(name, _)| name != "tg-signature");
        assert_eq!(rejected_signature(&request), "no tg-signature header");
    }

    #[test]
    fn a_wrong_secret_or_a_changed_body_fails_the_signature() {
        let request = signed(EVENT);
        assert!(matches!(
            parse_webhook(&request, "whsec_other"),
            Err(WebhookError::InvalidSignature(_))
        ));
        let mut tampered = request.clone();
        tampered.body = EVENT.replace("1000", "9000").into_bytes();
        assert!(rejected_signature(&tampered).contains("no v1 signature matches"));
    }

    #[test]
    fn timestamps_more_than_five_minutes_away_are_refused_either_way() {
        let at = |now: i64| WebhookRequest {
            now,
            ..signed(EVENT)
        };
        let t_ms = 1_764_000_000_000;
        parse_webhook(&at(t_ms + 300_000), DEFAULT_WEBHOOK_SECRET).expect("300 s late is fine");
        parse_webhook(&at(t_ms - 300_000), DEFAULT_WEBHOOK_SECRET).expect("300 s early is fine");
        assert!(rejected_signature(&at(t_ms + 301_000)).contains("more than 300 s"));
        assert!(rejected_signature(&at(t_ms - 301_000)).contains("more than 300 s"));
    }

    #[test]
    fn badly_formed_signature_headers_are_refused() {
        for header in [
            "",
            "v1=0011223344556677",
            &format!("t={T}"),
            &format!(
                "t=soon,v1={}",
                signature(DEFAULT_WEBHOOK_SECRET, "soon", EVENT.as_bytes())
            ),
            &format!("t=-{T},v1=00"),
            &format!("t={T},t={T},v1=00"),
            "garbage",
        ] {
            rejected_signature(&delivery(EVENT, header));
        }
    }

    #[test]
    fn any_matching_v1_among_several_is_enough_and_unknown_schemes_are_ignored() {
        let v1 = signature(DEFAULT_WEBHOOK_SECRET, T, EVENT.as_bytes());
        let header = format!(
            "t={T}, v0=abc, v1=ffffffffffffffff, v1={}",
            v1.to_uppercase()
        );
        parse_webhook(&delivery(EVENT, &header), DEFAULT_WEBHOOK_SECRET).expect("verified");
    }

    #[test]
    fn event_types_map_to_kinds_and_unknown_ones_to_other() {
        for (kind_text, kind) in [
            ("payment.authorized", WebhookEventKind::Authorized),
            ("payment.captured", WebhookEventKind::Captured),
            ("payment.refunded", WebhookEventKind::Refunded),
            ("payment.voided", WebhookEventKind::Voided),
            ("payment.failed", WebhookEventKind::Failed),
            ("payment.disputed", WebhookEventKind::Other),
            ("customer.created", WebhookEventKind::Other),
        ] {
            let body = EVENT.replace("payment.captured", kind_text);
            assert_eq!(parsed(&body).expect(kind_text).kind, kind, "{kind_text}");
        }
    }

    #[test]
    fn reference_and_amount_are_optional() {
        let event = parsed(r#"{"id":"evt_2","type":"account.updated","created":1764000000}"#)
            .expect("decoded");
        assert_eq!(event.gateway_reference, None);
        assert_eq!(event.amount, None);
        let event = parsed(
            r#"{"id":"evt_3","type":"payment.failed","reference":null,"amount":null,"currency":null,"created":1764000000}"#,
        )
        .expect("decoded");
        assert_eq!((event.gateway_reference, event.amount), (None, None));
    }

    #[test]
    fn whitespace_escapes_and_nested_fields_are_understood() {
        let body = "{\n  \"data\": {\"object\": [1, {\"x\": \"}\"}], \"live\": false},\n  \"id\": \"evt_\\u00e9\\ud83d\\ude00\\n\",\n  \"type\" : \"payment.refunded\",\n  \"reference\": \"tg_\\\"q\\\"\", \"amount\": 250, \"currency\": \"JPY\",\n  \"created\": 1764000000\n}\n";
        let event = parsed(body).expect("decoded");
        assert_eq!(event.event_id, "evt_é😀\n");
        assert_eq!(event.gateway_reference.as_deref(), Some("tg_\"q\""));
        assert_eq!(event.amount, Some(Money::new(250, "JPY")));
        assert_eq!(event.kind, WebhookEventKind::Refunded);
    }

    #[test]
    fn bodies_that_are_not_a_usable_event_are_malformed() {
        for (body, expected) in [
            ("", "expected '{'"),
            ("[]", "expected '{'"),
            (r#"{"type":"payment.captured","created":1}"#, "no event id"),
            (
                r#"{"id":"","type":"payment.captured","created":1}"#,
                "no event id",
            ),
            (r#"{"id":"e","created":1}"#, "no event type"),
            (r#"{"id":"e","type":"payment.captured"}"#, "no created time"),
            (
                r#"{"id":"e","type":7,"created":1}"#,
                "type must be a string",
            ),
            (
                r#"{"id":"e","type":"t","created":1,"amount":5}"#,
                "without a currency",
            ),
            (
                r#"{"id":"e","type":"t","created":1,"amount":-5,"currency":"EUR"}"#,
                "whole number",
            ),
            (
                r#"{"id":"e","type":"t","created":1,"amount":1.5,"currency":"EUR"}"#,
                "whole number",
            ),
            (
                r#"{"id":"e","type":"t","created":1,"amount":5,"currency":"eur"}"#,
                "ISO 4217",
            ),
            (
                r#"{"id":"e","type":"t","created":99999999999999999}"#,
                "out of range",
            ),
            (
                r#"{"id":"e","id":"f","type":"t","created":1}"#,
                "duplicate field",
            ),
            (
                r#"{"id":"e","type":"t","created":1} x"#,
                "text after the object",
            ),
            (r#"{"id":"e","type":"t","created":1"#, "expected ',' or '}'"),
            (r#"{"id":"e\q","type":"t","created":1}"#, "unknown escape"),
            (
                r#"{"id":"\ud800","type":"t","created":1}"#,
                "unpaired surrogate",
            ),
            (
                "{\"id\":\"a\tb\",\"type\":\"t\",\"created\":1}",
                "control character",
            ),
            (
                r#"{"id":"e","type":"t","created":1,"x":nope}"#,
                "expected a value",
            ),
        ] {
            let message = malformed_body(body);
            assert!(
                message.contains(expected),
                "{body}: {message:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn deeply_nested_bodies_are_refused_before_they_exhaust_the_stack() {
        let body = format!(
            r#"{{"id":"e","type":"t","created":1,"x":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(malformed_body(&body).contains("nested too deeply"));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_malformed() {
        let body = [0xff, 0xfe];
        let v1 = signature(DEFAULT_WEBHOOK_SECRET, T, &body);
        let mut request = delivery("", &format!("t={T},v1={v1}"));
        request.body = body.to_vec();
        assert!(matches!(
            parse_webhook(&request, DEFAULT_WEBHOOK_SECRET),
            Err(WebhookError::Malformed(_))
        ));
    }
}
