//! The one place the WIT contract becomes Rust: host-side bindings for the four plugin worlds
//! and the capabilities.
//!
//! The `types` and `host` interfaces are generated once, with the pricing world, and shared by
//! the others so that a `Money` is the same type whichever hook it travels through. Every
//! generated type also derives serde, which gives the CLI and the call log a JSON form of each
//! hook's input and output.

#![allow(missing_docs, clippy::all)]

mod pricing_world {
    wasmtime::component::bindgen!({
        world: "pricing-plugin",
        path: "../wit",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq],
    });
}

mod fraud_world {
    wasmtime::component::bindgen!({
        world: "fraud-plugin",
        path: "../wit",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq],
        with: {
            "cartridge:plugin/types": super::pricing_world::cartridge::plugin::types,
            "cartridge:plugin/host": super::pricing_world::cartridge::plugin::host,
        },
    });
}

mod personalization_world {
    wasmtime::component::bindgen!({
        world: "personalization-plugin",
        path: "../wit",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq],
        with: {
            "cartridge:plugin/types": super::pricing_world::cartridge::plugin::types,
            "cartridge:plugin/host": super::pricing_world::cartridge::plugin::host,
        },
    });
}

mod payment_world {
    wasmtime::component::bindgen!({
        world: "payment-plugin",
        path: "../wit",
        exports: { default: async },
        additional_derives: [serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq],
        with: {
            "cartridge:plugin/types": super::pricing_world::cartridge::plugin::types,
            "cartridge:plugin/host": super::pricing_world::cartridge::plugin::host,
        },
    });
}

/// The capabilities (`cartridge:capabilities@0.1.0`): imports any plugin may use once granted.
/// Their host functions are async (outbound HTTP waits on the network) and trappable (a call
/// outside the plugin's grants stops it).
mod capabilities_world {
    wasmtime::component::bindgen!({
        world: "cartridge:capabilities/capabilities",
        path: "../wit",
        imports: { default: async | trappable },
        additional_derives: [serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq],
    });
}

pub use capabilities_world::cartridge::capabilities::{http, secrets};

pub use pricing_world::cartridge::plugin::host;
pub use pricing_world::cartridge::plugin::types;

/// The pricing hook's types, and its pre-linked component type.
pub mod pricing {
    pub use super::pricing_world::exports::cartridge::plugin::pricing::*;
    pub use super::pricing_world::{PricingPlugin, PricingPluginPre};
}

/// The fraud hook's types, and its pre-linked component type.
pub mod fraud {
    pub use super::fraud_world::exports::cartridge::plugin::fraud::*;
    pub use super::fraud_world::{FraudPlugin, FraudPluginPre};
}

/// The personalization hook's types, and its pre-linked component type.
pub mod personalization {
    pub use super::personalization_world::exports::cartridge::plugin::personalization::*;
    pub use super::personalization_world::{PersonalizationPlugin, PersonalizationPluginPre};
}

/// The payment hook's types, and the export indices of its three interfaces: `payment`, which
/// every connector exports, and `payment-lookup` and `payment-disputes`, which connectors built
/// before them (the `basic-payment-plugin` world, or an earlier `payment-plugin`) lack. The
/// host binds them one by one rather than as the world, so that it still loads those.
pub mod payment {
    pub use super::payment_world::exports::cartridge::plugin::payment::*;
    pub use super::payment_world::exports::cartridge::plugin::payment_disputes::{
        Dispute, DisputeStatus, GuestIndices as DisputesIndices,
    };
    pub use super::payment_world::exports::cartridge::plugin::payment_lookup::{
        FindRequest, Guest as Lookup, GuestIndices as LookupIndices,
    };
}
