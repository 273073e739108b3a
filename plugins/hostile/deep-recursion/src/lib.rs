//! Test only: recurses until the stack runs out.

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, Operation, Pricing};

struct DeepRecursion;

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    let pad = std::hint::black_box(pad);
    descend(depth + 1, pad).wrapping_add(pad[(depth % 16) as usize])
}

impl Pricing for DeepRecursion {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        std::hint::black_box(descend(cart.lines.len() as u64, [7; 16]));
        Ok(Vec::new())
    }
}

cartridge_sdk::export_plugin!(pricing, DeepRecursion);
