//! Test only: a personalization plugin that panics on every call, to exercise the hook's
//! failure policy.

use cartridge_sdk::PluginError;
use cartridge_sdk::personalization::{Context, Personalization, Ranking};

struct Broken;

impl Personalization for Broken {
    fn rank(_context: Context) -> Result<Ranking, PluginError> {
        panic!("the personalization plugin is broken");
    }
}

cartridge_sdk::export_plugin!(personalization, Broken);
