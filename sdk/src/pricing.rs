//! The pricing hook: return declarative price operations for a cart.
//!
//! Every active pricing plugin gets the same [`Cart`]; the host validates each plugin's
//! [`Operation`]s (lines exist, currency matches, no discount above what it discounts, codes
//! were entered) and applies them in the operator's plugin order under their [`Stacking`]
//! modes. A plugin never computes totals.

use crate::PluginError;

pub use crate::__private::pricing::exports::cartridge::plugin::pricing::{
    Action, Cart, CartLine, Customer, DiscountValue, FixedUnitPrice, LineDiscount, Operation,
    Stacking,
};
pub use crate::{Attribute, Money, Timestamp};

/// A pricing plugin.
pub trait Pricing {
    /// Decides the price operations for `cart`. Return an empty list to change nothing.
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError>;
}

impl DiscountValue {
    /// A whole-percent discount: `percent(15)` is 15 % off.
    pub fn percent(percent: u32) -> Self {
        Self::BasisPoints(percent.saturating_mul(100))
    }

    /// A fixed amount off, in minor units of the cart's currency.
    pub fn amount(amount: u64, currency: impl Into<String>) -> Self {
        Self::Amount(crate::Money::new(amount, currency))
    }
}

impl Operation {
    fn new(action: Action, label: impl Into<String>) -> Self {
        Self {
            action,
            label: label.into(),
            code: None,
            stacking: Stacking::Combine,
        }
    }

    /// A discount on every unit of one line.
    pub fn line_discount(line_id: &str, value: DiscountValue, label: impl Into<String>) -> Self {
        Self::new(
            Action::LineDiscount(LineDiscount {
                line_id: line_id.to_owned(),
                value,
                quantity: None,
            }),
            label,
        )
    }

    /// A discount on `quantity` units of one line (e.g. the free unit of buy-two-get-one).
    pub fn unit_discount(
        line_id: &str,
        quantity: u32,
        value: DiscountValue,
        label: impl Into<String>,
    ) -> Self {
        Self::new(
            Action::LineDiscount(LineDiscount {
                line_id: line_id.to_owned(),
                value,
                quantity: Some(quantity),
            }),
            label,
        )
    }

    /// A discount on the order subtotal.
    pub fn order_discount(value: DiscountValue, label: impl Into<String>) -> Self {
        Self::new(Action::OrderDiscount(value), label)
    }

    /// A new unit price for every unit of one line.
    pub fn fixed_unit_price(line_id: &str, unit_price: Money, label: impl Into<String>) -> Self {
        Self::new(
            Action::FixedUnitPrice(FixedUnitPrice {
                line_id: line_id.to_owned(),
                unit_price,
                quantity: None,
            }),
            label,
        )
    }

    /// Free shipping.
    pub fn free_shipping(label: impl Into<String>) -> Self {
        Self::new(Action::FreeShipping, label)
    }

    /// Marks the operation as the answer to an entered coupon code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets how the operation combines with others on its target (default: combine).
    pub fn with_stacking(mut self, stacking: Stacking) -> Self {
        self.stacking = stacking;
        self
    }
}

impl Cart {
    /// Whether the shopper entered `code` (codes are upper-case in the cart).
    pub fn has_code(&self, code: &str) -> bool {
        self.coupon_codes
            .iter()
            .any(|entered| entered.eq_ignore_ascii_case(code))
    }

    /// The cart's subtotal before discounts, in minor units.
    pub fn subtotal(&self) -> u64 {
        self.lines.iter().map(CartLine::subtotal).sum()
    }
}

impl CartLine {
    /// Unit price × quantity, in minor units.
    pub fn subtotal(&self) -> u64 {
        self.unit_price
            .amount
            .saturating_mul(u64::from(self.quantity))
    }
}
