//! The personalization hook: rank candidate products and recommend some for a shopper.
//!
//! The host passes the shopper's [`Context`] (tags, past purchases, cart) and the candidates in
//! the store's default order. The plugin returns a [`Ranking`]; the host drops any SKU that was
//! not a candidate and keeps the default order for candidates the plugin left out.

use crate::PluginError;

pub use crate::__private::personalization::exports::cartridge::plugin::personalization::{
    Candidate, Context, Purchase, Ranking,
};
pub use crate::{Attribute, Money, Timestamp};

/// A personalization plugin.
pub trait Personalization {
    /// Ranks the candidates of `context` and picks up to `context.limit` recommendations.
    fn rank(context: Context) -> Result<Ranking, PluginError>;
}

impl Ranking {
    /// Keeps the default order and recommends the first `limit` candidates.
    pub fn default_order(context: &Context) -> Self {
        let ranked: Vec<String> = context.candidates.iter().map(|c| c.sku.clone()).collect();
        let limit = usize::try_from(context.limit).unwrap_or(usize::MAX);
        Self {
            recommended: ranked.iter().take(limit).cloned().collect(),
            ranked,
        }
    }
}
