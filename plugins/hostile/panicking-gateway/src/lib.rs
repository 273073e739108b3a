//! Test only: a payment connector that panics on every call, to exercise the hook's failure
//! policy.

use cartridge_sdk::payment::{AuthorizeRequest, Payment, PaymentError, PaymentResult};

struct Broken;

impl Payment for Broken {
    fn authorize(_request: AuthorizeRequest) -> Result<PaymentResult, PaymentError> {
        panic!("the payment connector is broken");
    }
}

cartridge_sdk::export_plugin!(payment, Broken);
