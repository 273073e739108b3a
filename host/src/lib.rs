//! # cartridge-host
//!
//! The Cartridge host: a commerce pipeline whose business rules are sandboxed WebAssembly
//! components. The host owns all state; plugins are called at hooks (pricing, fraud,
//! personalization, payment) and return decisions that the host validates before acting.
//!
//! Layout:
//! - [`plugin`]: the plugin runtime — contract bindings, sandbox, loading, calling, named
//!   errors, output validation.
//! - [`pricing`]: applies validated price operations from several plugins to a cart.
//! - [`hooks`]: runs every plugin of a hook in order under each one's failure policy.
//! - [`registry`]: plugin versions in the database, hot swaps, the watched directory, shadow
//!   runs; every host serves what it says.
//! - [`db`]: SQLite or PostgreSQL behind one pool, and the migrations.
//! - [`inventory`]: multi-location stock with reservations that cannot oversell.
//! - [`cli`]: the `cartridge` command line (`serve`, `plugin new|build|run`).
//! - [`catalog`], [`carts`], [`orders`], [`customers`]: products, carts, checkout and orders,
//!   accounts.
//! - [`payment_events`]: payment webhook events, stored once and applied in any order.
//! - [`recovery`]: checkouts interrupted between authorising and recording the order; the
//!   sweep that looks their payments up and releases them.
//! - [`idempotency`]: stored idempotency keys, claimed and finished inside any transaction.
//! - [`shipping`]: shipping methods, their rates per currency and where they ship.
//! - [`demo`]: the demo store's catalog and stock.
//! - [`api`]: the HTTP routes, authentication and error convention; [`server`] starts them.
//!
//! Boundaries: nothing outside [`plugin`] touches wasmtime; plugins never see the database;
//! SQL lives in the modules that own the tables.

pub mod api;
pub mod carts;
pub mod catalog;
pub mod cli;
pub mod customers;
pub mod db;
pub mod demo;
pub mod hooks;
pub mod idempotency;
pub mod inventory;
pub mod orders;
pub mod payment_events;
pub mod plugin;
pub mod pricing;
pub mod recovery;
pub mod registry;
pub mod server;
pub mod shipping;
