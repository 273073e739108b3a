//! The payment hook: a connector between the host's payment state machine and one gateway.
//!
//! The host decides when to authorise, capture, refund or void and checks the amounts; the
//! connector turns each step into gateway calls and maps the gateway's answer to a
//! [`PaymentResult`] or a [`PaymentError`] with a [`PaymentErrorCode`]. Each request carries an
//! `operation_id` that stays the same when the host retries the step: pass it to the gateway as
//! its idempotency key so that a retry never charges twice.
//!
//! [`Payment::find`] is the lookup (the WIT's `payment-lookup`): when a checkout stopped after
//! sending authorize — its process killed, the answer lost — the host asks what the gateway
//! holds for that operation and releases it. Implement it if the gateway can be searched (by
//! the order reference sent with authorize, say); without it the host can only log the
//! operation for the operator.
//!
//! [`Payment::parse_dispute`] reads disputes (the WIT's `payment-disputes`): chargebacks and
//! the issuer's inquiries, which the host keeps with the disputed order and counts in the
//! buyer's history for fraud checks. The host offers it the deliveries `parse_webhook`
//! decoded as [`WebhookEventKind::Other`].

pub use crate::__private::payment::exports::cartridge::plugin::payment::{
    AuthorizeRequest, CaptureRequest, PaymentError, PaymentErrorCode, PaymentResult, PaymentStatus,
    RefundRequest, VoidRequest, WebhookError, WebhookEvent, WebhookEventKind, WebhookRequest,
};
pub use crate::__private::payment::exports::cartridge::plugin::payment_disputes::{
    Dispute, DisputeStatus,
};
pub use crate::__private::payment::exports::cartridge::plugin::payment_lookup::FindRequest;
pub use crate::{Attribute, Money, Timestamp};

/// A payment connector. `authorize` is required; the other steps (and the lookup) default to
/// refusing with [`PaymentErrorCode::InvalidRequest`], for gateways that do not support them.
pub trait Payment {
    /// Holds `request.amount` on the payment method behind `request.payment_token`.
    fn authorize(request: AuthorizeRequest) -> Result<PaymentResult, PaymentError>;

    /// Captures some or all of an authorisation.
    fn capture(request: CaptureRequest) -> Result<PaymentResult, PaymentError> {
        Err(PaymentError::unsupported(
            "capture",
            &request.gateway_reference,
        ))
    }

    /// Refunds some or all of what was captured.
    fn refund(request: RefundRequest) -> Result<PaymentResult, PaymentError> {
        Err(PaymentError::unsupported(
            "refund",
            &request.gateway_reference,
        ))
    }

    /// Releases an authorisation.
    fn void(request: VoidRequest) -> Result<PaymentResult, PaymentError> {
        Err(PaymentError::unsupported(
            "void",
            &request.gateway_reference,
        ))
    }

    /// Looks up what the authorize step `request.operation_id` left at the gateway, when the
    /// host never got its answer (a crash, a timeout). `Ok(None)`: the gateway holds no payment
    /// from it. The host voids whatever is found, so this step only reads. The default says
    /// the connector cannot look payments up; the host then leaves the operator a log line.
    fn find(request: FindRequest) -> Result<Option<PaymentResult>, PaymentError> {
        Err(PaymentError::new(
            PaymentErrorCode::InvalidRequest,
            format!(
                "this connector cannot look up payments (operation {})",
                request.operation_id
            ),
        ))
    }

    /// Verifies and decodes a webhook delivery.
    fn parse_webhook(_request: WebhookRequest) -> Result<WebhookEvent, WebhookError> {
        Err(WebhookError::Malformed(
            "this connector does not accept webhooks".to_owned(),
        ))
    }

    /// The dispute a webhook delivery reports, verified as in [`Payment::parse_webhook`];
    /// `Ok(None)` when it reports something else. The default reads none.
    fn parse_dispute(_request: WebhookRequest) -> Result<Option<Dispute>, WebhookError> {
        Ok(None)
    }
}

impl PaymentResult {
    /// A successful step that moved `amount` on the gateway's payment `gateway_reference`.
    pub fn new(status: PaymentStatus, gateway_reference: impl Into<String>, amount: Money) -> Self {
        Self {
            status,
            gateway_reference: gateway_reference.into(),
            amount,
            step_reference: None,
        }
    }

    /// Adds the gateway's id for the capture or refund object this step created.
    pub fn with_step_reference(mut self, reference: impl Into<String>) -> Self {
        self.step_reference = Some(reference.into());
        self
    }
}

impl PaymentError {
    /// Adds the gateway's own code, verbatim (e.g. `card_declined`).
    pub fn with_gateway_code(mut self, code: impl Into<String>) -> Self {
        self.gateway_code = Some(code.into());
        self
    }

    /// Adds the gateway's reference for the attempt.
    pub fn with_gateway_reference(mut self, reference: impl Into<String>) -> Self {
        self.gateway_reference = Some(reference.into());
        self
    }

    /// An error with a code and a message for the operator.
    pub fn new(code: PaymentErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            gateway_code: None,
            gateway_reference: None,
        }
    }

    fn unsupported(step: &str, reference: &str) -> Self {
        Self {
            gateway_reference: Some(reference.to_owned()),
            ..Self::new(
                PaymentErrorCode::InvalidRequest,
                format!("this connector does not support {step}"),
            )
        }
    }
}
