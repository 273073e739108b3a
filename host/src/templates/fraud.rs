//! A fraud plugin. The host calls `assess` before any payment is attempted; `Deny` refuses the
//! checkout, `Review` holds the order for a person.

use cartridge_sdk::PluginError;
use cartridge_sdk::fraud::{Assessment, Checkout, Fraud, Reason};

struct Plugin;

impl Fraud for Plugin {
    fn assess(checkout: Checkout) -> Result<Assessment, PluginError> {
        // Example: hold first orders above 1,000.00 for review.
        if checkout.customer.history.order_count == 0 && checkout.total.amount > 100_000 {
            return Ok(Assessment::from_score(
                60,
                vec![Reason::new("large-first-order", "first order above 1,000.00")],
                50,
                90,
            ));
        }
        Ok(Assessment::allow())
    }
}

cartridge_sdk::export_plugin!(fraud, Plugin);
