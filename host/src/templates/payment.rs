//! A payment connector. The host owns the payment state machine and calls one step at a time;
//! pass `operation_id` to your gateway as its idempotency key.
//!
//! Also implement `find` if your gateway can look a payment up (by the order reference you
//! send with authorize, say): the host calls it for a checkout interrupted after authorize,
//! and voids what it finds. Without it, such an authorisation is left to the operator.

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
