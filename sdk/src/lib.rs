//! # cartridge-sdk: write Cartridge plugins in Rust
//!
//! A Cartridge plugin is a WebAssembly component that the Cartridge host calls at one hook of
//! the commerce pipeline. It receives a typed input (a cart, a checkout, a shopper, a payment
//! step) and returns a decision; the host validates the decision and owns all state. A plugin
//! has no files, no environment, no clock and no network unless granted (see [`http`]): the
//! time of the request arrives in the input.
//!
//! This crate is all a plugin depends on. It hides the generated component bindings and offers,
//! per hook kind, one trait and the types of its contract:
//!
//! | hook            | trait                                     | module                 |
//! |-----------------|-------------------------------------------|------------------------|
//! | pricing         | [`pricing::Pricing`]                      | [`pricing`]            |
//! | fraud           | [`fraud::Fraud`]                          | [`fraud`]              |
//! | personalization | [`personalization::Personalization`]      | [`personalization`]    |
//! | payment         | [`payment::Payment`]                      | [`payment`]            |
//!
//! and one macro, [`export_plugin!`], that turns a type implementing the trait into the
//! component's exports. [`log`] and [`config`] are the host functions every plugin may call;
//! [`http`] and [`secrets`] are capabilities, usable once the manifest asks for them and an
//! operator grants them.
//!
//! ```
//! use cartridge_sdk::pricing::{Cart, DiscountValue, Operation, Pricing};
//! use cartridge_sdk::PluginError;
//!
//! /// 10 % off every line of three or more units.
//! struct Bulk;
//!
//! impl Pricing for Bulk {
//!     fn price(cart: Cart) -> Result<Vec<Operation>, PluginError> {
//!         Ok(cart.lines.iter()
//!             .filter(|line| line.quantity >= 3)
//!             .map(|line| Operation::line_discount(&line.id, DiscountValue::percent(10), "10 % off 3+"))
//!             .collect())
//!     }
//! }
//!
//! cartridge_sdk::export_plugin!(pricing, Bulk);
//! # fn main() {}
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (or `cartridge plugin build`) and
//! put the `.wasm` next to a `plugin.toml` manifest.
//!
//! Calls of one plugin take turns on a few instances, so statics (a parsed configuration in a
//! `OnceLock`, say) may survive from one call to the next — or not: an instance is dropped
//! after a call that failed and retired after a while, and a different configuration always
//! gets new ones. Use that for caches, never for anything a call must see; a manifest with
//! `reuse-instances = false` gets a new instance for every call.
//!
//! Layout: the generated bindings live in the hidden `__private` module, one sub-module per
//! world; each public hook module re-exports an explicit list of its types and adds the trait
//! and a few constructors. The contract itself is the WIT package in the repository's `wit/`.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod __private {
    //! Generated bindings. Not part of the public API: use the hook modules instead.

    /// Bindings for the pricing world; also the home of the shared `types` and `host`
    /// interfaces, which the other worlds reuse.
    #[allow(missing_docs, clippy::all)]
    pub mod pricing {
        wit_bindgen::generate!({
            world: "pricing-plugin",
            path: "../wit",
            generate_unused_types: true,
            additional_derives: [Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize],
            pub_export_macro: true,
            export_macro_name: "__export_pricing",
            default_bindings_module: "cartridge_sdk::__private::pricing",
            disable_custom_section_link_helpers: true,
        });
    }

    /// Bindings for the fraud world.
    #[allow(missing_docs, clippy::all)]
    pub mod fraud {
        wit_bindgen::generate!({
            world: "fraud-plugin",
            path: "../wit",
            additional_derives: [Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize],
            with: {
                "cartridge:plugin/types@0.1.0": crate::__private::pricing::cartridge::plugin::types,
                "cartridge:plugin/host@0.1.0": crate::__private::pricing::cartridge::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_fraud",
            default_bindings_module: "cartridge_sdk::__private::fraud",
            disable_custom_section_link_helpers: true,
        });
    }

    /// Bindings for the personalization world.
    #[allow(missing_docs, clippy::all)]
    pub mod personalization {
        wit_bindgen::generate!({
            world: "personalization-plugin",
            path: "../wit",
            additional_derives: [Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize],
            with: {
                "cartridge:plugin/types@0.1.0": crate::__private::pricing::cartridge::plugin::types,
                "cartridge:plugin/host@0.1.0": crate::__private::pricing::cartridge::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_personalization",
            default_bindings_module: "cartridge_sdk::__private::personalization",
            disable_custom_section_link_helpers: true,
        });
    }

    /// Bindings for the payment world.
    #[allow(missing_docs, clippy::all)]
    pub mod payment {
        wit_bindgen::generate!({
            world: "payment-plugin",
            path: "../wit",
            additional_derives: [Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize],
            with: {
                "cartridge:plugin/types@0.1.0": crate::__private::pricing::cartridge::plugin::types,
                "cartridge:plugin/host@0.1.0": crate::__private::pricing::cartridge::plugin::host,
            },
            pub_export_macro: true,
            export_macro_name: "__export_payment",
            default_bindings_module: "cartridge_sdk::__private::payment",
            disable_custom_section_link_helpers: true,
        });
    }

    /// Bindings for the capabilities (imports only): outbound HTTP and secrets.
    #[allow(missing_docs, clippy::all)]
    pub mod capabilities {
        wit_bindgen::generate!({
            world: "cartridge:capabilities/capabilities",
            path: "../wit",
            additional_derives: [Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize],
            disable_custom_section_link_helpers: true,
        });
    }

    pub use pricing::cartridge::plugin::host as host_bindings;

    /// Runs at the start of every exported call. Installs, once, a panic hook that writes the
    /// panic's location and message to standard error, where the host picks it up to explain
    /// the trap. The standard hook would first read `RUST_BACKTRACE` from the environment,
    /// which the sandbox denies.
    pub fn enter() {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(no message)");
                match info.location() {
                    Some(at) => eprintln!("panicked at {}:{}: {message}", at.file(), at.line()),
                    None => eprintln!("panicked: {message}"),
                }
            }));
        });
    }
}

mod types {
    pub use crate::__private::pricing::cartridge::plugin::types::{
        Address, Attribute, Money, PluginError, Timestamp,
    };
}

pub use types::{Address, Attribute, Money, PluginError, Timestamp};

/// The version of the WIT contract this SDK builds plugins against. A plugin's manifest names
/// it as `contract`.
pub const CONTRACT_VERSION: &str = "0.1.0";

impl Money {
    /// An amount in minor units of `currency`.
    pub fn new(amount: u64, currency: impl Into<String>) -> Self {
        Self {
            amount,
            currency: currency.into(),
        }
    }
}

impl Attribute {
    /// A name/value pair.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl PluginError {
    /// A failure with a stable `code` and a message for the operator.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Reads a configuration value: the operator's setting, else the manifest's default.
///
/// Outside WebAssembly (a plugin compiled natively, for its unit tests or into a host) there
/// is no host to ask: the value comes from [`with_config`], and is `None` outside it.
pub fn config(key: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        __private::host_bindings::config(key)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::CONFIG.with(|config| config.borrow().get(key).cloned())
    }
}

/// Runs `f` with `config` as the plugin's configuration, as a host would pass it: for a
/// plugin compiled natively (its unit tests, or a host comparing it with its component).
#[cfg(not(target_arch = "wasm32"))]
pub fn with_config<R>(
    config: &std::collections::BTreeMap<String, String>,
    f: impl FnOnce() -> R,
) -> R {
    /// Puts the previous configuration back however `f` ends, a panic included.
    struct Restore(Option<std::collections::BTreeMap<String, String>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                native::CONFIG.with(|c| *c.borrow_mut() = previous);
            }
        }
    }
    let _restore = Restore(Some(native::CONFIG.with(|c| c.replace(config.clone()))));
    f()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        pub(crate) static CONFIG: RefCell<BTreeMap<String, String>> = RefCell::default();
    }

    #[cfg(test)]
    mod tests {
        use std::collections::BTreeMap;

        #[test]
        fn with_config_serves_the_values_and_puts_the_previous_ones_back() {
            assert_eq!(crate::config("tiers"), None);
            let outer = BTreeMap::from([("tiers".to_owned(), "3:500".to_owned())]);
            let inner = BTreeMap::from([("tiers".to_owned(), "10:1000".to_owned())]);
            crate::with_config(&outer, || {
                assert_eq!(crate::config("tiers").as_deref(), Some("3:500"));
                let caught = std::panic::catch_unwind(|| {
                    crate::with_config(&inner, || {
                        assert_eq!(crate::config("tiers").as_deref(), Some("10:1000"));
                        panic!("the plugin panicked");
                    })
                });
                assert!(caught.is_err());
                assert_eq!(crate::config("tiers").as_deref(), Some("3:500"));
            });
            assert_eq!(crate::config("tiers"), None);
        }
    }
}

/// Writes to the host's log, tagged with the plugin's name, version and hook.
///
/// A call's log output is capped by the host (4 KiB); lines past the cap are dropped. Outside
/// WebAssembly the line goes to standard error, so native unit tests show it.
pub mod log {
    use crate::__private::host_bindings::LogLevel;

    fn write(level: LogLevel, message: &str) {
        #[cfg(target_arch = "wasm32")]
        {
            crate::__private::host_bindings::log(level, message);
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            eprintln!("[{level:?}] {message}");
        }
    }

    /// Logs at `trace` level.
    pub fn trace(message: &str) {
        write(LogLevel::Trace, message);
    }
    /// Logs at `debug` level.
    pub fn debug(message: &str) {
        write(LogLevel::Debug, message);
    }
    /// Logs at `info` level.
    pub fn info(message: &str) {
        write(LogLevel::Info, message);
    }
    /// Logs at `warn` level.
    pub fn warn(message: &str) {
        write(LogLevel::Warn, message);
    }
    /// Logs at `error` level.
    pub fn error(message: &str) {
        write(LogLevel::Error, message);
    }
}

pub mod http;

pub mod secrets;

pub mod pricing;

pub mod fraud;

pub mod personalization;

pub mod payment;

/// Exports a plugin: `export_plugin!(<hook>, <Type>)`, where `<hook>` is one of `pricing`,
/// `fraud`, `personalization` or `payment` and `<Type>` implements that hook's trait.
///
/// Use it once per plugin crate, at the crate root.
///
/// ```
/// use cartridge_sdk::fraud::{Assessment, Checkout, Fraud};
/// use cartridge_sdk::PluginError;
///
/// struct AllowAll;
///
/// impl Fraud for AllowAll {
///     fn assess(_checkout: Checkout) -> Result<Assessment, PluginError> {
///         Ok(Assessment::allow())
///     }
/// }
///
/// cartridge_sdk::export_plugin!(fraud, AllowAll);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_plugin {
    (pricing, $plugin:ty) => {
        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_price(
            cart: $crate::pricing::Cart,
        ) -> ::core::result::Result<::std::vec::Vec<$crate::pricing::Operation>, $crate::PluginError> {
            <$plugin as $crate::pricing::Pricing>::price(cart)
        }

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::pricing::exports::cartridge::plugin::pricing as __bindings;

            struct __CartridgeExport;

            impl __bindings::Guest for __CartridgeExport {
                fn price(
                    cart: __bindings::Cart,
                ) -> ::core::result::Result<__bindings::PriceResult, $crate::PluginError> {
                    $crate::__private::enter();
                    <$plugin as $crate::pricing::Pricing>::price(cart)
                        .map(|operations| __bindings::PriceResult { operations })
                }
            }

            $crate::__private::pricing::__export_pricing!(
                __CartridgeExport with_types_in $crate::__private::pricing
            );

            // Keeps this world's component-type section, and only this one, in the binary.
            #[cfg(target_arch = "wasm32")]
            #[used]
            static __CARTRIDGE_WORLD: &[u8] =
                &$crate::__private::pricing::__WIT_BINDGEN_COMPONENT_TYPE;
        };
    };
    (fraud, $plugin:ty) => {
        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_assess(
            checkout: $crate::fraud::Checkout,
        ) -> ::core::result::Result<$crate::fraud::Assessment, $crate::PluginError> {
            <$plugin as $crate::fraud::Fraud>::assess(checkout)
        }

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::fraud::exports::cartridge::plugin::fraud as __bindings;

            struct __CartridgeExport;

            impl __bindings::Guest for __CartridgeExport {
                fn assess(
                    checkout: __bindings::Checkout,
                ) -> ::core::result::Result<__bindings::Assessment, $crate::PluginError> {
                    $crate::__private::enter();
                    <$plugin as $crate::fraud::Fraud>::assess(checkout)
                }
            }

            $crate::__private::fraud::__export_fraud!(
                __CartridgeExport with_types_in $crate::__private::fraud
            );

            #[cfg(target_arch = "wasm32")]
            #[used]
            static __CARTRIDGE_WORLD: &[u8] =
                &$crate::__private::fraud::__WIT_BINDGEN_COMPONENT_TYPE;
        };
    };
    (personalization, $plugin:ty) => {
        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_rank(
            context: $crate::personalization::Context,
        ) -> ::core::result::Result<$crate::personalization::Ranking, $crate::PluginError> {
            <$plugin as $crate::personalization::Personalization>::rank(context)
        }

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::personalization::exports::cartridge::plugin::personalization as __bindings;

            struct __CartridgeExport;

            impl __bindings::Guest for __CartridgeExport {
                fn rank(
                    context: __bindings::Context,
                ) -> ::core::result::Result<__bindings::Ranking, $crate::PluginError> {
                    $crate::__private::enter();
                    <$plugin as $crate::personalization::Personalization>::rank(context)
                }
            }

            $crate::__private::personalization::__export_personalization!(
                __CartridgeExport with_types_in $crate::__private::personalization
            );

            #[cfg(target_arch = "wasm32")]
            #[used]
            static __CARTRIDGE_WORLD: &[u8] =
                &$crate::__private::personalization::__WIT_BINDGEN_COMPONENT_TYPE;
        };
    };
    (payment, $plugin:ty) => {
        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_authorize(
            request: $crate::payment::AuthorizeRequest,
        ) -> ::core::result::Result<$crate::payment::PaymentResult, $crate::payment::PaymentError> {
            <$plugin as $crate::payment::Payment>::authorize(request)
        }

        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_capture(
            request: $crate::payment::CaptureRequest,
        ) -> ::core::result::Result<$crate::payment::PaymentResult, $crate::payment::PaymentError> {
            <$plugin as $crate::payment::Payment>::capture(request)
        }

        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_refund(
            request: $crate::payment::RefundRequest,
        ) -> ::core::result::Result<$crate::payment::PaymentResult, $crate::payment::PaymentError> {
            <$plugin as $crate::payment::Payment>::refund(request)
        }

        /// The plugin compiled natively (see the SDK's `with_config`).
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn cartridge_native_void(
            request: $crate::payment::VoidRequest,
        ) -> ::core::result::Result<$crate::payment::PaymentResult, $crate::payment::PaymentError> {
            <$plugin as $crate::payment::Payment>::void(request)
        }

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::payment::exports::cartridge::plugin::payment as __bindings;

            struct __CartridgeExport;

            impl __bindings::Guest for __CartridgeExport {
                fn authorize(
                    request: __bindings::AuthorizeRequest,
                ) -> ::core::result::Result<__bindings::PaymentResult, __bindings::PaymentError> {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::authorize(request)
                }
                fn capture(
                    request: __bindings::CaptureRequest,
                ) -> ::core::result::Result<__bindings::PaymentResult, __bindings::PaymentError> {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::capture(request)
                }
                fn refund(
                    request: __bindings::RefundRequest,
                ) -> ::core::result::Result<__bindings::PaymentResult, __bindings::PaymentError> {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::refund(request)
                }
                fn void(
                    request: __bindings::VoidRequest,
                ) -> ::core::result::Result<__bindings::PaymentResult, __bindings::PaymentError> {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::void(request)
                }
                fn parse_webhook(
                    request: __bindings::WebhookRequest,
                ) -> ::core::result::Result<__bindings::WebhookEvent, __bindings::WebhookError> {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::parse_webhook(request)
                }
            }

            impl $crate::__private::payment::exports::cartridge::plugin::payment_lookup::Guest
                for __CartridgeExport
            {
                fn find(
                    request: $crate::payment::FindRequest,
                ) -> ::core::result::Result<
                    ::core::option::Option<__bindings::PaymentResult>,
                    __bindings::PaymentError,
                > {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::find(request)
                }
            }

            impl $crate::__private::payment::exports::cartridge::plugin::payment_disputes::Guest
                for __CartridgeExport
            {
                fn parse_dispute(
                    request: __bindings::WebhookRequest,
                ) -> ::core::result::Result<
                    ::core::option::Option<$crate::payment::Dispute>,
                    __bindings::WebhookError,
                > {
                    $crate::__private::enter();
                    <$plugin as $crate::payment::Payment>::parse_dispute(request)
                }
            }

            $crate::__private::payment::__export_payment!(
                __CartridgeExport with_types_in $crate::__private::payment
            );

            #[cfg(target_arch = "wasm32")]
            #[used]
            static __CARTRIDGE_WORLD: &[u8] =
                &$crate::__private::payment::__WIT_BINDGEN_COMPONENT_TYPE;
        };
    };
}
