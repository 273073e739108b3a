//! Payment steps → Stripe API requests. Pure: no I/O, so every request can be checked natively.
//!
//! Every request is a form-encoded `POST` with `Authorization: Bearer <api-key>` and an
//! `Idempotency-Key` derived from the step's operation id, so that a retry of the step (same
//! operation id) is answered by Stripe with the first attempt's result instead of moving money
//! again.

use cartridge_sdk::payment::{
    AuthorizeRequest, CaptureRequest, PaymentError, PaymentErrorCode, RefundRequest, VoidRequest,
};
use sha2::{Digest, Sha256};

/// Sent as `User-Agent`.
pub const USER_AGENT: &str = concat!("cartridge-stripe-connector/", env!("CARGO_PKG_VERSION"));

/// Stripe's longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Stripe's metadata limits: keys, values, and how many.
const MAX_METADATA_KEY: usize = 40;
const MAX_METADATA_VALUE: usize = 500;
const MAX_METADATA_ENTRIES: usize = 50;

/// Where and as whom to call Stripe.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// `https://api.stripe.com`, without a trailing slash.
    pub api_base: String,
    /// The secret key. Never logged, never in a message.
    pub api_key: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("api_base", &self.api_base)
            .field("api_key", &"[redacted]")
            .finish()
    }
}

impl Settings {
    /// Checks the configuration: an absolute `http(s)` base URL and an `sk_`/`rk_` key.
    pub fn new(api_base: &str, api_key: Option<String>) -> Result<Self, PaymentError> {
        let api_base = api_base.trim().trim_end_matches('/');
        let url_ok = (api_base.starts_with("https://") || api_base.starts_with("http://"))
            && !api_base.contains(['?', '#', ' ']);
        if !url_ok {
            return Err(PaymentError::new(
                PaymentErrorCode::InvalidRequest,
                format!("config api-base {api_base:?} is not an http(s) URL"),
            ));
        }
        let api_key = api_key.map(|k| k.trim().to_owned()).unwrap_or_default();
        if api_key.is_empty() {
            return Err(PaymentError::new(
                PaymentErrorCode::InvalidRequest,
                "the api-key secret is not set",
            ));
        }
        if !(api_key.starts_with("sk_") || api_key.starts_with("rk_")) {
            // Say what is wrong without echoing any of it.
            return Err(PaymentError::new(
                PaymentErrorCode::InvalidRequest,
                "the api-key secret is not a Stripe secret or restricted key (sk_… or rk_…)",
            ));
        }
        Ok(Self {
            api_base: api_base.to_owned(),
            api_key,
        })
    }
}

/// One HTTP request to Stripe, before it is handed to the host.
#[derive(Clone, PartialEq, Eq)]
pub struct StripeRequest {
    /// `POST` for the steps, `GET` for a lookup's pages.
    pub method: &'static str,
    /// Absolute URL.
    pub url: String,
    /// Name/value pairs, the API key among them.
    pub headers: Vec<(String, String)>,
    /// `application/x-www-form-urlencoded`.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for StripeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body holds the payment token and the headers the key: neither is printed.
        f.debug_struct("StripeRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl StripeRequest {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The `Idempotency-Key` for a step: `cartridge-<operation id>` when that is short, printable
/// ASCII; otherwise `cartridge-sha256-<hex digest of the operation id>`. The same operation
/// id always gives the same key, different ones never collide in practice.
pub fn idempotency_key(operation_id: &str) -> String {
    let plain = format!("cartridge-{operation_id}");
    let printable = operation_id.bytes().all(|b| b.is_ascii_graphic());
    if printable && !operation_id.is_empty() && plain.len() <= MAX_IDEMPOTENCY_KEY {
        return plain;
    }
    let digest = Sha256::digest(operation_id.as_bytes());
    format!("cartridge-sha256-{}", hex(&digest))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// `application/x-www-form-urlencoded`, every byte outside the unreserved set percent-encoded.
pub fn form_encode(fields: &[(String, String)]) -> Vec<u8> {
    let mut out = String::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(name, &mut out);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out.into_bytes()
}

fn percent_encode(text: &str, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
    }
}

/// A Stripe object id as a URL path segment: non-empty, letters, digits and `_` only.
fn object_id(reference: &str) -> Result<&str, PaymentError> {
    let valid = !reference.is_empty()
        && reference.len() <= 255
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(reference)
    } else {
        Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            format!("{reference:?} is not a Stripe PaymentIntent id"),
        ))
    }
}

/// Stripe's currency codes are lower-case ISO 4217.
fn currency(code: &str) -> Result<String, PaymentError> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_lowercase())
    } else {
        Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            format!("{code:?} is not an ISO 4217 currency code"),
        ))
    }
}

fn post(
    settings: &Settings,
    path: &str,
    operation_id: &str,
    fields: &[(String, String)],
) -> StripeRequest {
    StripeRequest {
        method: "POST",
        url: format!("{}{path}", settings.api_base),
        headers: vec![
            (
                "authorization".to_owned(),
                format!("Bearer {}", settings.api_key),
            ),
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("idempotency-key".to_owned(), idempotency_key(operation_id)),
            ("user-agent".to_owned(), USER_AGENT.to_owned()),
        ],
        body: form_encode(fields),
    }
}

fn field(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// Truncates to at most `max` bytes on a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `metadata[key]=value` fields within Stripe's limits; names it cannot take are skipped.
fn metadata(entries: &[(&str, &str)]) -> Vec<(String, String)> {
    entries
        .iter()
        .filter(|(name, _)| {
            !name.is_empty() && name.len() <= MAX_METADATA_KEY && !name.contains(['[', ']'])
        })
        .take(MAX_METADATA_ENTRIES)
        .map(|(name, value)| {
            (
                format!("metadata[{name}]"),
                truncated(value, MAX_METADATA_VALUE).to_owned(),
            )
        })
        .collect()
}

/// Twelve or more digits, perhaps grouped with spaces or dashes, and nothing else.
fn looks_like_a_card_number(token: &str) -> bool {
    let digits = token.bytes().filter(u8::is_ascii_digit).count();
    digits >= 12
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
}

/// Authorize: create a PaymentIntent with manual capture and confirm it at once with the
/// payment method the token names. Card payments only (`payment_method_types[]=card`), so
/// that Stripe does not ask for a redirect URL.
pub fn authorize(
    settings: &Settings,
    request: &AuthorizeRequest,
) -> Result<StripeRequest, PaymentError> {
    if request.payment_token.is_empty() {
        return Err(PaymentError::new(
            PaymentErrorCode::InvalidPaymentMethod,
            "no payment token",
        ));
    }
    if looks_like_a_card_number(&request.payment_token) {
        // Never sent anywhere, never echoed: checkout must take a gateway token.
        return Err(PaymentError::new(
            PaymentErrorCode::InvalidPaymentMethod,
            "the payment token looks like a card number; pass a Stripe PaymentMethod id (pm_…)",
        ));
    }
    if request.amount.amount == 0 {
        return Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            "Stripe cannot authorise an amount of zero",
        ));
    }
    let mut fields = vec![
        field("amount", request.amount.amount.to_string()),
        field("currency", currency(&request.amount.currency)?),
        field("capture_method", "manual"),
        field("confirm", "true"),
        field("payment_method", request.payment_token.as_str()),
        field("payment_method_types[0]", "card"),
    ];
    let mut entries: Vec<(&str, &str)> = vec![("order_reference", &request.order_reference)];
    entries.extend(
        request
            .metadata
            .iter()
            .filter(|a| a.name != "order_reference")
            .map(|a| (a.name.as_str(), a.value.as_str())),
    );
    fields.extend(metadata(&entries));
    Ok(post(
        settings,
        "/v1/payment_intents",
        &request.operation_id,
        &fields,
    ))
}

/// Capture `amount` of an authorised PaymentIntent. Stripe releases the rest unless this is
/// not the final capture (`final_capture=false`, multicapture only).
pub fn capture(
    settings: &Settings,
    request: &CaptureRequest,
) -> Result<StripeRequest, PaymentError> {
    let id = object_id(&request.gateway_reference)?;
    currency(&request.amount.currency)?;
    let mut fields = vec![field(
        "amount_to_capture",
        request.amount.amount.to_string(),
    )];
    if !request.final_capture {
        fields.push(field("final_capture", "false"));
    }
    Ok(post(
        settings,
        &format!("/v1/payment_intents/{id}/capture"),
        &request.operation_id,
        &fields,
    ))
}

/// Refund `amount` of what the PaymentIntent captured; the reason goes into the refund's
/// metadata (Stripe's own `reason` is a closed list).
pub fn refund(settings: &Settings, request: &RefundRequest) -> Result<StripeRequest, PaymentError> {
    let id = object_id(&request.gateway_reference)?;
    currency(&request.amount.currency)?;
    if request.amount.amount == 0 {
        return Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            "Stripe cannot refund an amount of zero",
        ));
    }
    let mut fields = vec![
        field("payment_intent", id),
        field("amount", request.amount.amount.to_string()),
    ];
    if let Some(reason) = request.reason.as_deref().filter(|r| !r.is_empty()) {
        fields.extend(metadata(&[("reason", reason)]));
    }
    Ok(post(
        settings,
        "/v1/refunds",
        &request.operation_id,
        &fields,
    ))
}

/// Void: cancel the PaymentIntent, releasing what is authorised.
pub fn void(settings: &Settings, request: &VoidRequest) -> Result<StripeRequest, PaymentError> {
    let id = object_id(&request.gateway_reference)?;
    Ok(post(
        settings,
        &format!("/v1/payment_intents/{id}/cancel"),
        &request.operation_id,
        &[],
    ))
}

/// The most PaymentIntents one page of a lookup asks for (Stripe's largest page).
pub const LOOKUP_PAGE: usize = 100;

/// Lookup: one page of the account's PaymentIntents, newest first, after `starting_after`
/// (the last id of the page before). A read: no idempotency key, no body.
pub fn find_page(
    settings: &Settings,
    starting_after: Option<&str>,
) -> Result<StripeRequest, PaymentError> {
    let mut url = format!(
        "{}/v1/payment_intents?limit={LOOKUP_PAGE}",
        settings.api_base
    );
    if let Some(after) = starting_after {
        url.push_str("&starting_after=");
        url.push_str(object_id(after)?);
    }
    Ok(StripeRequest {
        method: "GET",
        url,
        headers: vec![
            (
                "authorization".to_owned(),
                format!("Bearer {}", settings.api_key),
            ),
            ("user-agent".to_owned(), USER_AGENT.to_owned()),
        ],
        body: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartridge_sdk::payment::{Attribute, Money};

    const KEY: &str = "sk_test_cartridge_unit";

    fn settings() -> Settings {
        Settings::new("https://api.stripe.com/", Some(KEY.to_owned())).expect("settings")
    }

    /// Decodes a form body into (name, value) pairs.
    fn form(body: &[u8]) -> Vec<(String, String)> {
        fn decode(text: &str) -> String {
            let bytes = text.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                    out.push(u8::from_str_radix(hex, 16).expect("hex"));
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).expect("utf-8")
        }
        let text = std::str::from_utf8(body).expect("ascii");
        if text.is_empty() {
            return Vec::new();
        }
        text.split('&')
            .map(|pair| {
                let (name, value) = pair.split_once('=').expect("name=value");
                (decode(name), decode(value))
            })
            .collect()
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn authorize_request() -> AuthorizeRequest {
        AuthorizeRequest {
            operation_id: "0193a1b2:authorize".into(),
            order_reference: "0193a1b2".into(),
            amount: Money::new(5_997, "EUR"),
            payment_token: "pm_card_visa".into(),
            customer_email: Some("ada@example.com".into()),
            metadata: vec![Attribute::new("channel", "web & app")],
            now: 1_764_000_000_000,
        }
    }

    #[test]
    fn authorize_creates_a_confirmed_payment_intent_with_manual_capture() {
        let request = authorize(&settings(), &authorize_request()).expect("request");
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "https://api.stripe.com/v1/payment_intents");
        assert_eq!(
            request.header("Authorization"),
            Some("Bearer sk_test_cartridge_unit")
        );
        assert_eq!(
            request.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            request.header("idempotency-key"),
            Some("cartridge-0193a1b2:authorize")
        );
        assert_eq!(
            form(&request.body),
            pairs(&[
                ("amount", "5997"),
                ("currency", "eur"),
                ("capture_method", "manual"),
                ("confirm", "true"),
                ("payment_method", "pm_card_visa"),
                ("payment_method_types[0]", "card"),
                ("metadata[order_reference]", "0193a1b2"),
                ("metadata[channel]", "web & app"),
            ])
        );
        // The e-mail address is not sent: Stripe does not need it to authorise.
        assert!(!String::from_utf8_lossy(&request.body).contains("example.com"));
    }

    #[test]
    fn form_bodies_percent_encode_everything_outside_the_unreserved_set() {
        let body = form_encode(&pairs(&[("metadata[a b]", "x&y=z/ü~"), ("k", "")]));
        assert_eq!(
            String::from_utf8(body).expect("ascii"),
            "metadata%5Ba%20b%5D=x%26y%3Dz%2F%C3%BC~&k="
        );
    }

    #[test]
    fn the_idempotency_key_is_stable_per_operation_and_within_stripes_limit() {
        assert_eq!(idempotency_key("o1:capture"), idempotency_key("o1:capture"));
        assert_ne!(idempotency_key("o1:capture"), idempotency_key("o1:void"));
        assert_eq!(idempotency_key("o1:refund:7"), "cartridge-o1:refund:7");
        for awkward in ["", "with space", "ünïcode", &"x".repeat(300)] {
            let key = idempotency_key(awkward);
            assert!(key.starts_with("cartridge-sha256-"), "{key}");
            assert_eq!(key.len(), "cartridge-sha256-".len() + 64);
            assert!(key.bytes().all(|b| b.is_ascii_graphic()));
        }
        assert_ne!(
            idempotency_key(&"x".repeat(300)),
            idempotency_key(&"x".repeat(301))
        );
        // The longest operation id that is kept as it is.
        let longest = "y".repeat(255 - "cartridge-".len());
        assert_eq!(idempotency_key(&longest), format!("cartridge-{longest}"));
    }

    #[test]
    fn sha256_hex_matches_the_published_vector() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn capture_names_the_amount_and_only_a_non_final_capture_says_so() {
        let mut step = CaptureRequest {
            operation_id: "o1:capture".into(),
            gateway_reference: "pi_3Qabc".into(),
            amount: Money::new(3_000, "EUR"),
            final_capture: true,
            now: 0,
        };
        let request = capture(&settings(), &step).expect("request");
        assert_eq!(
            request.url,
            "https://api.stripe.com/v1/payment_intents/pi_3Qabc/capture"
        );
        assert_eq!(
            request.header("idempotency-key"),
            Some("cartridge-o1:capture")
        );
        assert_eq!(form(&request.body), pairs(&[("amount_to_capture", "3000")]));
        step.final_capture = false;
        let request = capture(&settings(), &step).expect("request");
        assert_eq!(
            form(&request.body),
            pairs(&[("amount_to_capture", "3000"), ("final_capture", "false")])
        );
    }

    #[test]
    fn refund_names_the_payment_intent_and_the_amount_and_keeps_the_reason_as_metadata() {
        let mut step = RefundRequest {
            operation_id: "o1:refund:0193".into(),
            gateway_reference: "pi_3Qabc".into(),
            amount: Money::new(1_000, "EUR"),
            reason: Some("damaged".into()),
            now: 0,
        };
        let request = refund(&settings(), &step).expect("request");
        assert_eq!(request.url, "https://api.stripe.com/v1/refunds");
        assert_eq!(
            request.header("idempotency-key"),
            Some("cartridge-o1:refund:0193")
        );
        assert_eq!(
            form(&request.body),
            pairs(&[
                ("payment_intent", "pi_3Qabc"),
                ("amount", "1000"),
                ("metadata[reason]", "damaged"),
            ])
        );
        step.reason = Some("x".repeat(600));
        let fields = form(&refund(&settings(), &step).expect("request").body);
        assert_eq!(fields[2].1.len(), 500, "Stripe takes 500 characters");
        step.reason = None;
        assert_eq!(
            form(&refund(&settings(), &step).expect("request").body).len(),
            2
        );
    }

    #[test]
    fn void_cancels_the_payment_intent() {
        let request = void(
            &settings(),
            &VoidRequest {
                operation_id: "o1:void".into(),
                gateway_reference: "pi_3Qabc".into(),
                amount: Money::new(5_997, "EUR"),
                now: 0,
            },
        )
        .expect("request");
        assert_eq!(
            request.url,
            "https://api.stripe.com/v1/payment_intents/pi_3Qabc/cancel"
        );
        assert_eq!(request.header("idempotency-key"), Some("cartridge-o1:void"));
        assert!(request.body.is_empty());
    }

    #[test]
    fn a_reference_that_is_not_an_object_id_never_reaches_a_url() {
        for reference in ["", "pi_1/../../v1/charges", "pi_1?x=1", "pi 1", "pi_1%2F"] {
            let error = void(
                &settings(),
                &VoidRequest {
                    operation_id: "o".into(),
                    gateway_reference: reference.into(),
                    amount: Money::new(1, "EUR"),
                    now: 0,
                },
            )
            .expect_err(reference);
            assert_eq!(
                error.code,
                PaymentErrorCode::InvalidRequest,
                "{reference:?}"
            );
        }
    }

    #[test]
    fn authorize_refuses_what_stripe_would_refuse_before_calling_it() {
        let mut step = authorize_request();
        step.payment_token.clear();
        let error = authorize(&settings(), &step).expect_err("no token");
        assert_eq!(error.code, PaymentErrorCode::InvalidPaymentMethod);
        for card_number in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4000-0566-5566-5556",
        ] {
            let mut step = authorize_request();
            step.payment_token = card_number.into();
            let error = authorize(&settings(), &step).expect_err(card_number);
            assert_eq!(error.code, PaymentErrorCode::InvalidPaymentMethod);
            assert!(!error.message.contains("4242") && !error.message.contains("5556"));
        }
        let mut step = authorize_request();
        step.amount = Money::new(0, "EUR");
        assert_eq!(
            authorize(&settings(), &step).expect_err("zero").code,
            PaymentErrorCode::InvalidRequest
        );
        let mut step = authorize_request();
        step.amount = Money::new(1, "EURO");
        assert_eq!(
            authorize(&settings(), &step).expect_err("currency").code,
            PaymentErrorCode::InvalidRequest
        );
    }

    #[test]
    fn metadata_stripe_cannot_take_is_left_out_or_cut() {
        let mut step = authorize_request();
        step.metadata = vec![
            Attribute::new("k".repeat(41), "too long a key"),
            Attribute::new("a[b]", "brackets"),
            Attribute::new("", "empty"),
            Attribute::new("order_reference", "cannot override ours"),
            Attribute::new("note", "é".repeat(300)),
        ];
        let fields = form(&authorize(&settings(), &step).expect("request").body);
        let metadata: Vec<_> = fields
            .iter()
            .filter(|(n, _)| n.starts_with("metadata["))
            .collect();
        assert_eq!(metadata.len(), 2, "{metadata:?}");
        assert_eq!(metadata[0].1, "0193a1b2");
        assert_eq!(
            metadata[1].1,
            "é".repeat(250),
            "cut on a character boundary"
        );
    }

    #[test]
    fn settings_need_an_http_base_and_a_secret_key_and_never_echo_the_key() {
        assert_eq!(settings().api_base, "https://api.stripe.com");
        let local = Settings::new("http://127.0.0.1:4242", Some(" sk_test_x\n".into()))
            .expect("localstripe");
        assert_eq!(local.api_key, "sk_test_x");
        for (base, key) in [
            ("https://api.stripe.com", None),
            ("https://api.stripe.com", Some(String::new())),
            ("api.stripe.com", Some(KEY.to_owned())),
            ("https://api.stripe.com?x", Some(KEY.to_owned())),
        ] {
            let error = Settings::new(base, key).expect_err(base);
            assert_eq!(error.code, PaymentErrorCode::InvalidRequest);
        }
        let error = Settings::new("https://api.stripe.com", Some("pk_live_publishable".into()))
            .expect_err("publishable key");
        assert!(
            !error.message.contains("pk_live_publishable"),
            "{}",
            error.message
        );
        let debug = format!(
            "{:?} {:?}",
            settings(),
            authorize(&settings(), &authorize_request())
        );
        assert!(
            !debug.contains(KEY) && !debug.contains("pm_card_visa"),
            "{debug}"
        );
    }
}
