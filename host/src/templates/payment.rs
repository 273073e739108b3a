//! A payment connector. The host owns the payment state machine and calls one step at a time;
//! pass `operation_id` to your gateway as its idempotency key.

use cartridge_sdk::payment::{
    AuthorizeRequest, Payment, PaymentError, PaymentErrorCode, PaymentResult, PaymentStatus,
};

struct Plugin;

impl Payment for Plugin {
    fn authorize(request: AuthorizeRequest) -> Result<PaymentResult, PaymentError> {
        if request.payment_token.is_empty() {
            return Err(PaymentError::new(
                PaymentErrorCode::InvalidPaymentMethod,
                "no payment token",
            ));
        }
        Ok(PaymentResult {
            status: PaymentStatus::Authorized,
            gateway_reference: format!("auth-{}", request.operation_id),
            amount: request.amount,
            step_reference: None,
        })
    }
}

cartridge_sdk::export_plugin!(payment, Plugin);
