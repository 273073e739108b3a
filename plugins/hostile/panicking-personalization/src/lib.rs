//! Test only: a personalization plugin that panics on every call, to exercise the hook's
//! failure policy. It answers the registry's smoke call (only `SMOKE-` candidates) normally, so
//! that it can be installed like a plugin with a latent bug.

use cartridge_sdk::PluginError;
use cartridge_sdk::personalization::{Context, Personalization, Ranking};

struct Broken;

impl Personalization for Broken {
    fn rank(context: Context) -> Result<Ranking, PluginError> {
        if context
            .candidates
            .iter()
            .all(|c| c.sku.starts_with("SMOKE-"))
        {
            return Ok(Ranking {
                ranked: context.candidates.into_iter().map(|c| c.sku).collect(),
                recommended: Vec::new(),
            });
        }
        panic!("the personalization plugin is broken");
    }
}

cartridge_sdk::export_plugin!(personalization, Broken);
