//! A personalization plugin. The host calls `rank` with the shopper and the candidate products;
//! it keeps only candidates and fills in the default order for anything you leave out.

use cartridge_sdk::PluginError;
use cartridge_sdk::personalization::{Context, Personalization, Ranking};

struct Plugin;

impl Personalization for Plugin {
    fn rank(context: Context) -> Result<Ranking, PluginError> {
        // Example: keep the store's order.
        Ok(Ranking::default_order(&context))
    }
}

cartridge_sdk::export_plugin!(personalization, Plugin);
