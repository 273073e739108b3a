//! Test only: allocates 1 GiB and touches it.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};

struct MemoryHog;

impl Pricing for MemoryHog {
    fn price(_cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let hog = vec![1u8; 1 << 30];
        std::hint::black_box(&hog);
        Ok(Vec::new())
    }
}

cartridge_sdk::export_plugin!(pricing, MemoryHog);
