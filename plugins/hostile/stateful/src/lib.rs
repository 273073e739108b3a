//! Test only: counts the calls its instance has served in a static and puts the count in the
//! label of a 1 % discount on the first line, so a test can tell which calls shared an
//! instance. Each coupon code in the cart makes the call do one more thing first:
//! `panic` panics, `grow` keeps 8 MiB of memory, `stderr` writes to standard error (WASI),
//! `secret` reads the secret `token`, `spin` loops until the deadline stops it, and
//! `nonsense` discounts a line the cart does not have.

use std::sync::atomic::{AtomicU32, Ordering};

use cartridge_sdk::PluginError;
use cartridge_sdk::pricing::{Cart, DiscountValue, Operation, Pricing};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Memory the `grow` code keeps for the rest of the instance's life.
static KEPT: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

struct Stateful;

impl Pricing for Stateful {
    fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
        let call = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        for code in &cart.coupon_codes {
            match code.as_str() {
                "panic" => panic!("asked to panic on call {call}"),
                "grow" => {
                    if let Ok(mut kept) = KEPT.lock() {
                        kept.push(vec![1; 8 * 1024 * 1024]);
                    }
                }
                "stderr" => eprintln!("call {call}"),
                "secret" => {
                    let _ = cartridge_sdk::secrets::get("token");
                }
                "spin" => loop {
                    std::hint::spin_loop();
                },
                "nonsense" => {
                    return Ok(vec![Operation::line_discount(
                        "no-such-line",
                        DiscountValue::BasisPoints(100),
                        format!("call {call}"),
                    )]);
                }
                _ => {}
            }
        }
        let Some(line) = cart.lines.first() else {
            return Ok(Vec::new());
        };
        Ok(vec![Operation::line_discount(
            &line.id,
            DiscountValue::BasisPoints(100),
            format!("call {call}"),
        )])
    }
}

cartridge_sdk::export_plugin!(pricing, Stateful);
