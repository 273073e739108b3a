//! Test only: a fraud plugin that panics on every call, to exercise the hook's failure policy.
//! It answers the registry's smoke call (checkout `smoke-checkout`) normally, so that it can be
//! installed like a plugin with a latent bug.

use cartridge_sdk::PluginError;
use cartridge_sdk::fraud::{Assessment, Checkout, Decision, Fraud};

struct Broken;

impl Fraud for Broken {
    fn assess(checkout: Checkout) -> Result<Assessment, PluginError> {
        if checkout.id == "smoke-checkout" {
            return Ok(Assessment {
                decision: Decision::Allow,
                score: 0,
                reasons: Vec::new(),
            });
        }
        panic!("the fraud plugin is broken");
    }
}

cartridge_sdk::export_plugin!(fraud, Broken);
