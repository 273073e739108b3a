//! Test only: a payment connector built for the `basic-payment-plugin` world — `payment`
//! without `payment-lookup`, as every connector was before the lookup existed. The host must
//! keep loading and calling such components; it cannot ask them about a lost authorisation.
//!
//! Every step succeeds, with the reference `basic_<operation id>`; webhooks are refused.

wit_bindgen::generate!({
    world: "basic-payment-plugin",
    path: "../../../wit",
});

use exports::cartridge::plugin::payment::{
    AuthorizeRequest, CaptureRequest, Guest, PaymentError, PaymentResult, PaymentStatus,
    RefundRequest, VoidRequest, WebhookError, WebhookEvent, WebhookRequest,
};

struct Basic;

fn done(
    status: PaymentStatus,
    operation_id: &str,
    amount: cartridge::plugin::types::Money,
) -> PaymentResult {
    PaymentResult {
        status,
        gateway_reference: format!("basic_{operation_id}"),
        amount,
        step_reference: None,
    }
}

impl Guest for Basic {
    fn authorize(request: AuthorizeRequest) -> Result<PaymentResult, PaymentError> {
        Ok(done(
            PaymentStatus::Authorized,
            &request.operation_id,
            request.amount,
        ))
    }

    fn capture(request: CaptureRequest) -> Result<PaymentResult, PaymentError> {
        Ok(done(
            PaymentStatus::Captured,
            &request.operation_id,
            request.amount,
        ))
    }

    fn refund(request: RefundRequest) -> Result<PaymentResult, PaymentError> {
        Ok(done(
            PaymentStatus::Refunded,
            &request.operation_id,
            request.amount,
        ))
    }

    fn void(request: VoidRequest) -> Result<PaymentResult, PaymentError> {
        Ok(done(
            PaymentStatus::Voided,
            &request.operation_id,
            request.amount,
        ))
    }

    fn parse_webhook(_request: WebhookRequest) -> Result<WebhookEvent, WebhookError> {
        Err(WebhookError::Malformed("no webhooks".to_owned()))
    }
}

export!(Basic);
