//! The fraud hook: score a checkout before payment.
//!
//! The host passes a [`Checkout`] with a summary of the customer's history and what it may
//! know of the payment method (never card numbers). The plugin returns an [`Assessment`]: a
//! score from 0 to 100, a [`Decision`] and its reasons. Fraud hooks are fail-closed by default.

use crate::PluginError;

pub use crate::__private::fraud::exports::cartridge::plugin::fraud::{
    Assessment, Checkout, CheckoutLine, Customer, CustomerHistory, Decision, PaymentMethod, Reason,
};
pub use crate::{Address, Attribute, Money, Timestamp};

/// A fraud plugin.
pub trait Fraud {
    /// Assesses `checkout`.
    fn assess(checkout: Checkout) -> Result<Assessment, PluginError>;
}

impl Assessment {
    /// No risk found.
    pub fn allow() -> Self {
        Self {
            score: 0,
            decision: Decision::Allow,
            reasons: Vec::new(),
        }
    }

    /// An assessment from a score and reasons, deciding by two thresholds: `score >= deny_at`
    /// denies, `score >= review_at` holds for review, anything lower is allowed. The score is
    /// capped at 100; a `review_at` above `deny_at` is treated as `deny_at` (no review band).
    pub fn from_score(score: u32, reasons: Vec<Reason>, review_at: u32, deny_at: u32) -> Self {
        let score = score.min(100);
        let review_at = review_at.min(deny_at);
        let decision = if score >= deny_at {
            Decision::Deny
        } else if score >= review_at {
            Decision::Review
        } else {
            Decision::Allow
        };
        Self {
            // Capped at 100 just above, so it fits.
            score: u8::try_from(score).unwrap_or(100),
            decision,
            reasons,
        }
    }
}

impl Reason {
    /// A reason with a stable code and an explanation for the operator.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}
