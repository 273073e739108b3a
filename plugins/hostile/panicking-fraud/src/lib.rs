//! Test only: a fraud plugin that panics on every call, to exercise the hook's failure policy.

use cartridge_sdk::PluginError;
use cartridge_sdk::fraud::{Assessment, Checkout, Fraud};

struct Broken;

impl Fraud for Broken {
    fn assess(_checkout: Checkout) -> Result<Assessment, PluginError> {
        panic!("the fraud plugin is broken");
    }
}

cartridge_sdk::export_plugin!(fraud, Broken);
