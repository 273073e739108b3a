//! `/openapi.json`: the API's routes, who may call them, and the error convention, as an
//! OpenAPI 3.1 document. The route table here is checked against the router by the API tests
//! (every documented route answers), so the document cannot drift into routes that do not
//! exist.

use std::collections::BTreeMap;

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::{admin, plugins, storefront};
use crate::plugin::HookKind;

/// Who may call a route.
#[derive(Clone, Copy)]
enum Access {
    Anyone,
    CartToken,
    CartTokenIdempotent,
    Customer,
    Admin,
    /// Admin; an `Idempotency-Key` is accepted but not required.
    AdminMaybeIdempotent,
    AdminIdempotent,
    /// No bearer token: the payment connector verifies the delivery's signature.
    Signature,
    /// The scrape-only metrics token, or an admin token.
    Metrics,
}

impl Access {
    /// The scheme's name in [`documented_access`].
    fn scheme(self) -> &'static str {
        match self {
            Access::Anyone => "anyone",
            Access::CartToken | Access::CartTokenIdempotent => "cart",
            Access::Customer => "customer",
            Access::Admin | Access::AdminMaybeIdempotent | Access::AdminIdempotent => "admin",
            Access::Signature => "signature",
            Access::Metrics => "metrics",
        }
    }
}

/// (method, path, access, summary).
const ROUTES: &[(&str, &str, Access, &str)] = &[
    ("get", "/health", Access::Anyone, "Liveness"),
    (
        "get",
        "/ready",
        Access::Anyone,
        "Readiness: the database answers",
    ),
    (
        "get",
        "/metrics",
        Access::Metrics,
        "Prometheus metrics (the scrape-only token or an admin token)",
    ),
    ("get", "/openapi.json", Access::Anyone, "This document"),
    (
        "get",
        "/store/products",
        Access::Anyone,
        "Active products; filters: category (with sub-categories), q, attribute=name:value, limit, offset",
    ),
    (
        "get",
        "/store/products/{id}",
        Access::Anyone,
        "One active product",
    ),
    (
        "get",
        "/store/recommendations",
        Access::Anyone,
        "Products recommended for the shopper by the personalization plugins (the default order when none answers); limit 1 to 20",
    ),
    (
        "post",
        "/store/carts",
        Access::Anyone,
        "Create a cart; the response holds its secret token",
    ),
    (
        "get",
        "/store/carts/{id}",
        Access::CartToken,
        "The cart, priced by the pricing plugins",
    ),
    (
        "post",
        "/store/carts/{id}/lines",
        Access::CartToken,
        "Add a SKU (quantity 1 to 999)",
    ),
    (
        "patch",
        "/store/carts/{id}/lines/{line}",
        Access::CartToken,
        "Change a line's quantity",
    ),
    (
        "delete",
        "/store/carts/{id}/lines/{line}",
        Access::CartToken,
        "Remove a line",
    ),
    (
        "put",
        "/store/carts/{id}/coupons",
        Access::CartToken,
        "Set the entered coupon codes",
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        Access::CartTokenIdempotent,
        "Check out: re-price, fraud check, reserve, authorise, place the order",
    ),
    (
        "put",
        "/store/carts/{id}/details",
        Access::CartToken,
        "Save email and addresses for checkout",
    ),
    (
        "get",
        "/store/carts/{id}/shipping-methods",
        Access::CartToken,
        "Shipping methods for the cart, priced in its currency, that ship to its saved address",
    ),
    (
        "put",
        "/store/carts/{id}/shipping-method",
        Access::CartToken,
        "Choose a shipping method by code (null for none); checkout checks it against the address",
    ),
    (
        "post",
        "/store/orders/{id}/returns",
        Access::Customer,
        "Ask to return units of a shipped order; the merchant receives it under the request's id",
    ),
    (
        "post",
        "/store/customers",
        Access::Anyone,
        "Register an account (argon2id-hashed password)",
    ),
    (
        "post",
        "/store/customers/login",
        Access::Anyone,
        "Log in: a bearer token valid for 30 days. After 5 failures for one email in 15 minutes, 429 (`too_many_attempts`, with Retry-After) for 15 minutes",
    ),
    (
        "get",
        "/store/customers/me/orders",
        Access::Customer,
        "The signed-in customer's orders",
    ),
    (
        "get",
        "/store/orders/{id}",
        Access::Customer,
        "One of the signed-in customer's orders",
    ),
    (
        "post",
        "/admin/products",
        Access::Admin,
        "Create a product with its variants",
    ),
    (
        "get",
        "/admin/products/{id}",
        Access::Admin,
        "One product, archived or not",
    ),
    (
        "post",
        "/admin/products/{id}/archive",
        Access::Admin,
        "Archive a product",
    ),
    (
        "post",
        "/admin/categories",
        Access::Admin,
        "Create or rename a category",
    ),
    (
        "post",
        "/admin/locations",
        Access::Admin,
        "Create or change a stock location",
    ),
    (
        "get",
        "/admin/inventory/{sku}",
        Access::Admin,
        "Stock levels of a SKU per location",
    ),
    (
        "post",
        "/admin/inventory/{sku}/{location}/adjust",
        Access::Admin,
        "Receive or write off stock",
    ),
    (
        "get",
        "/admin/orders/{id}",
        Access::Admin,
        "One order with its lines, payment and the plugin decisions",
    ),
    (
        "post",
        "/admin/orders/{id}/capture",
        Access::AdminMaybeIdempotent,
        "Capture the authorised payment, all of it or `amount`; the rest is released. A retry of a capture whose outcome is unknown captures what that capture asked (409 `capture_in_progress` for another amount)",
    ),
    (
        "post",
        "/admin/orders/{id}/fulfil",
        Access::Admin,
        "Ship some or all of what is left, with carrier and tracking",
    ),
    (
        "post",
        "/admin/orders/{id}/cancel",
        Access::AdminMaybeIdempotent,
        "Cancel: void or refund, and restock",
    ),
    (
        "post",
        "/admin/orders/{id}/refunds",
        Access::AdminIdempotent,
        "Refund part of what was captured",
    ),
    (
        "post",
        "/admin/orders/{id}/returns",
        Access::Admin,
        "Receive returned units (restocks once per return id)",
    ),
    (
        "get",
        "/admin/shipping-methods",
        Access::Admin,
        "Every shipping method, archived ones included",
    ),
    (
        "get",
        "/admin/checkout-attempts",
        Access::Admin,
        "Checkouts not yet settled, oldest first: `in_flight`, `waiting` for the recovery sweep, `recovering`, or `unresolved` (the connector cannot look payments up: reconcile at the gateway, then dismiss)",
    ),
    (
        "delete",
        "/admin/checkout-attempts/{id}",
        Access::Admin,
        "Dismiss an unresolved checkout attempt once reconciled at the gateway (409 for any other)",
    ),
    (
        "post",
        "/admin/shipping-methods",
        Access::Admin,
        "Create a shipping method: code, name, carrier, countries (absent: anywhere), rates per currency",
    ),
    (
        "get",
        "/admin/shipping-methods/{id}",
        Access::Admin,
        "One shipping method",
    ),
    (
        "put",
        "/admin/shipping-methods/{id}",
        Access::Admin,
        "Replace a shipping method (its code stays); status active or archived",
    ),
    (
        "patch",
        "/admin/products/{id}",
        Access::Admin,
        "Change title, description, categories, attributes or prices",
    ),
    (
        "get",
        "/admin/orders",
        Access::Admin,
        "Orders, newest first; filters: status, email, limit, offset",
    ),
    (
        "get",
        "/admin/customers",
        Access::Admin,
        "Customers, newest account first, with their segments (tags); filters: email, tag, limit, offset",
    ),
    (
        "get",
        "/admin/customers/{id}",
        Access::Admin,
        "A customer and their segments (tags)",
    ),
    (
        "put",
        "/admin/customers/{id}/tags",
        Access::Admin,
        "Replace a customer's segments (tags): the pricing and fraud plugins are given them with every cart the customer owns",
    ),
    (
        "get",
        "/admin/plugins",
        Access::Admin,
        "The plugin registry: every plugin, its versions, the active one, what this host serves",
    ),
    (
        "post",
        "/admin/plugins",
        Access::Admin,
        "Upload a version (multipart: manifest, component); validated before it is stored; ?activate=true",
    ),
    ("get", "/admin/plugins/{name}", Access::Admin, "One plugin"),
    (
        "post",
        "/admin/plugins/{name}/activate",
        Access::Admin,
        "Make a stored version active on every host",
    ),
    (
        "post",
        "/admin/plugins/{name}/rollback",
        Access::Admin,
        "Make the previously active version active again",
    ),
    (
        "post",
        "/admin/plugins/{name}/disable",
        Access::Admin,
        "Stop serving the plugin",
    ),
    (
        "post",
        "/admin/plugins/{name}/enable",
        Access::Admin,
        "Serve it again; resets the crash-loop breaker",
    ),
    (
        "put",
        "/admin/plugins/{name}/config",
        Access::Admin,
        "Replace the operator's configuration (an object of strings)",
    ),
    (
        "put",
        "/admin/plugins/{name}/grants/{capability}",
        Access::Admin,
        "Grant a capability",
    ),
    (
        "delete",
        "/admin/plugins/{name}/grants/{capability}",
        Access::Admin,
        "Revoke a capability",
    ),
    (
        "put",
        "/admin/plugins/{name}/secrets/{secret}",
        Access::Admin,
        "Where a secret is: {\"env\": NAME} or {\"file\": PATH}; the value is never stored",
    ),
    (
        "delete",
        "/admin/plugins/{name}/secrets/{secret}",
        Access::Admin,
        "Remove a secret reference",
    ),
    (
        "get",
        "/admin/plugins/{name}/audit",
        Access::Admin,
        "Who changed what, newest first",
    ),
    (
        "get",
        "/admin/plugins/{name}/calls",
        Access::Admin,
        "The latest sampled hook calls",
    ),
    (
        "post",
        "/admin/plugins/{name}/versions/{version}/replay",
        Access::Admin,
        "Shadow run: the version against the last N logged inputs, next to the active one",
    ),
    (
        "put",
        "/admin/hooks/{hook}/order",
        Access::Admin,
        "The order of a hook's plugins",
    ),
    (
        "post",
        "/admin/plugins/{name}/invoke",
        Access::Admin,
        "Run one plugin's hook on a JSON input",
    ),
    (
        "post",
        "/webhooks/payments/{plugin}",
        Access::Signature,
        "A payment gateway's webhook delivery: verified by the connector, stored once per event id, then applied",
    ),
];

/// The (method, path) pairs documented, for the test that checks them against the router.
pub fn documented_routes() -> impl Iterator<Item = (&'static str, &'static str)> {
    ROUTES.iter().map(|(method, path, _, _)| (*method, *path))
}

/// (method, path, who may call it) for every documented route; who is `anyone`, `cart`,
/// `customer`, `admin`, `signature` or `metrics`. The auth sweeps in the tests are driven by it.
pub fn documented_access() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    ROUTES
        .iter()
        .map(|(method, path, access, _)| (*method, *path, access.scheme()))
}

/// A request body's schema, from the type its handler deserializes: documented and parsed
/// from one definition, so the two cannot disagree.
type SchemaOf = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// Any JSON value.
fn any_json(_: &mut SchemaGenerator) -> Schema {
    Schema::from(true)
}

/// (method, path, schema, required) of every route that takes a JSON body. A route that takes
/// none must not be listed: its handler ignores a body.
const JSON_BODIES: &[(&str, &str, SchemaOf, bool)] = &[
    (
        "post",
        "/store/carts",
        schema_of::<storefront::NewCart>,
        true,
    ),
    (
        "post",
        "/store/carts/{id}/lines",
        schema_of::<storefront::NewLine>,
        true,
    ),
    (
        "patch",
        "/store/carts/{id}/lines/{line}",
        schema_of::<storefront::Quantity>,
        true,
    ),
    (
        "put",
        "/store/carts/{id}/coupons",
        schema_of::<storefront::Coupons>,
        true,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        schema_of::<crate::orders::CheckoutInput>,
        true,
    ),
    (
        "put",
        "/store/carts/{id}/details",
        schema_of::<crate::carts::CartDetails>,
        true,
    ),
    (
        "put",
        "/store/carts/{id}/shipping-method",
        schema_of::<storefront::ShippingChoice>,
        true,
    ),
    (
        "post",
        "/store/customers",
        schema_of::<storefront::Registration>,
        true,
    ),
    (
        "post",
        "/store/customers/login",
        schema_of::<storefront::Login>,
        true,
    ),
    (
        "post",
        "/store/orders/{id}/returns",
        schema_of::<storefront::ReturnRequest>,
        true,
    ),
    (
        "post",
        "/admin/products",
        schema_of::<crate::catalog::NewProduct>,
        true,
    ),
    (
        "patch",
        "/admin/products/{id}",
        schema_of::<crate::catalog::ProductUpdate>,
        true,
    ),
    (
        "post",
        "/admin/categories",
        schema_of::<admin::Category>,
        true,
    ),
    (
        "post",
        "/admin/locations",
        schema_of::<admin::Location>,
        true,
    ),
    (
        "post",
        "/admin/inventory/{sku}/{location}/adjust",
        schema_of::<admin::Adjustment>,
        true,
    ),
    (
        "post",
        "/admin/orders/{id}/fulfil",
        schema_of::<admin::Fulfilment>,
        false,
    ),
    (
        "post",
        "/admin/orders/{id}/capture",
        schema_of::<admin::Capture>,
        false,
    ),
    (
        "post",
        "/admin/plugins/{name}/versions/{version}/replay",
        schema_of::<plugins::Replay>,
        false,
    ),
    (
        "post",
        "/admin/orders/{id}/refunds",
        schema_of::<admin::Refund>,
        true,
    ),
    (
        "put",
        "/admin/customers/{id}/tags",
        schema_of::<admin::CustomerTags>,
        true,
    ),
    (
        "post",
        "/admin/orders/{id}/returns",
        schema_of::<admin::Return>,
        true,
    ),
    (
        "post",
        "/admin/shipping-methods",
        schema_of::<crate::shipping::NewShippingMethod>,
        true,
    ),
    (
        "put",
        "/admin/shipping-methods/{id}",
        schema_of::<crate::shipping::ShippingMethodUpdate>,
        true,
    ),
    (
        "post",
        "/admin/plugins/{name}/activate",
        schema_of::<plugins::Activate>,
        true,
    ),
    (
        "put",
        "/admin/plugins/{name}/config",
        schema_of::<BTreeMap<String, String>>,
        true,
    ),
    (
        "put",
        "/admin/plugins/{name}/secrets/{secret}",
        schema_of::<crate::plugin::SecretRef>,
        true,
    ),
    (
        "put",
        "/admin/hooks/{hook}/order",
        schema_of::<plugins::Order>,
        true,
    ),
    ("post", "/admin/plugins/{name}/invoke", any_json, true),
    // The gateway's own format: the connector parses and verifies it.
    ("post", "/webhooks/payments/{plugin}", any_json, true),
];

/// (method, path, schema) of every route whose success answer is documented by the type its
/// handler serializes: one definition for both, so the document cannot promise a shape the
/// API does not send (schemathesis checks every answer it gets against it).
const RESPONSES: &[(&str, &str, SchemaOf)] = &[
    (
        "post",
        "/store/carts",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "get",
        "/store/carts/{id}",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "post",
        "/store/carts/{id}/lines",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "patch",
        "/store/carts/{id}/lines/{line}",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "delete",
        "/store/carts/{id}/lines/{line}",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "put",
        "/store/carts/{id}/coupons",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "put",
        "/store/carts/{id}/details",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "put",
        "/store/carts/{id}/shipping-method",
        schema_of::<storefront::PricedCartBody>,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "get",
        "/store/orders/{id}",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "get",
        "/admin/orders/{id}",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "post",
        "/admin/orders/{id}/fulfil",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "post",
        "/admin/orders/{id}/capture",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "post",
        "/admin/orders/{id}/cancel",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "post",
        "/admin/orders/{id}/refunds",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "post",
        "/admin/orders/{id}/returns",
        schema_of::<crate::orders::OrderView>,
    ),
    (
        "get",
        "/admin/orders",
        schema_of::<crate::orders::OrderList>,
    ),
    (
        "get",
        "/store/customers/me/orders",
        schema_of::<crate::orders::OrderList>,
    ),
    (
        "post",
        "/store/customers",
        schema_of::<crate::customers::Customer>,
    ),
    (
        "post",
        "/store/orders/{id}/returns",
        schema_of::<crate::orders::ReturnRequested>,
    ),
    (
        "post",
        "/store/customers/login",
        schema_of::<storefront::SignedInBody>,
    ),
    (
        "get",
        "/store/products",
        schema_of::<storefront::ProductPage>,
    ),
    (
        "get",
        "/store/recommendations",
        schema_of::<storefront::ProductPage>,
    ),
    (
        "get",
        "/store/products/{id}",
        schema_of::<crate::catalog::Product>,
    ),
    (
        "post",
        "/admin/products",
        schema_of::<crate::catalog::Product>,
    ),
    (
        "get",
        "/admin/products/{id}",
        schema_of::<crate::catalog::Product>,
    ),
    (
        "patch",
        "/admin/products/{id}",
        schema_of::<crate::catalog::Product>,
    ),
    (
        "post",
        "/admin/products/{id}/archive",
        schema_of::<crate::catalog::Product>,
    ),
    (
        "get",
        "/store/carts/{id}/shipping-methods",
        schema_of::<storefront::ShippingOffers>,
    ),
    ("post", "/admin/categories", schema_of::<admin::Category>),
    ("post", "/admin/locations", schema_of::<admin::Location>),
    (
        "get",
        "/admin/inventory/{sku}",
        schema_of::<admin::StockLevels>,
    ),
    (
        "post",
        "/admin/inventory/{sku}/{location}/adjust",
        schema_of::<crate::inventory::StockLevel>,
    ),
    (
        "get",
        "/admin/shipping-methods",
        schema_of::<admin::ShippingMethods>,
    ),
    (
        "post",
        "/admin/shipping-methods",
        schema_of::<crate::shipping::ShippingMethod>,
    ),
    (
        "get",
        "/admin/shipping-methods/{id}",
        schema_of::<crate::shipping::ShippingMethod>,
    ),
    (
        "put",
        "/admin/shipping-methods/{id}",
        schema_of::<crate::shipping::ShippingMethod>,
    ),
    (
        "get",
        "/admin/customers",
        schema_of::<crate::customers::ProfileList>,
    ),
    (
        "get",
        "/admin/customers/{id}",
        schema_of::<crate::customers::Profile>,
    ),
    (
        "put",
        "/admin/customers/{id}/tags",
        schema_of::<crate::customers::Profile>,
    ),
    (
        "get",
        "/admin/checkout-attempts",
        schema_of::<admin::CheckoutAttempts>,
    ),
    (
        "delete",
        "/admin/checkout-attempts/{id}",
        schema_of::<admin::Dismissed>,
    ),
    (
        "get",
        "/admin/plugins",
        schema_of::<crate::registry::PluginList>,
    ),
    ("post", "/admin/plugins", schema_of::<plugins::Uploaded>),
    (
        "get",
        "/admin/plugins/{name}",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "post",
        "/admin/plugins/{name}/activate",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "post",
        "/admin/plugins/{name}/rollback",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "post",
        "/admin/plugins/{name}/disable",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "post",
        "/admin/plugins/{name}/enable",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "put",
        "/admin/plugins/{name}/config",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "put",
        "/admin/plugins/{name}/grants/{capability}",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "delete",
        "/admin/plugins/{name}/grants/{capability}",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "put",
        "/admin/plugins/{name}/secrets/{secret}",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "delete",
        "/admin/plugins/{name}/secrets/{secret}",
        schema_of::<crate::registry::StoredPlugin>,
    ),
    (
        "get",
        "/admin/plugins/{name}/audit",
        schema_of::<crate::registry::AuditLog>,
    ),
    (
        "get",
        "/admin/plugins/{name}/calls",
        schema_of::<crate::registry::CallLog>,
    ),
    (
        "post",
        "/admin/plugins/{name}/versions/{version}/replay",
        schema_of::<crate::registry::replay::ReplayReport>,
    ),
    (
        "post",
        "/admin/plugins/{name}/invoke",
        schema_of::<crate::hooks::Invocation>,
    ),
    (
        "put",
        "/admin/hooks/{hook}/order",
        schema_of::<crate::registry::HookOrder>,
    ),
    ("get", "/health", schema_of::<super::Status>),
    ("get", "/ready", schema_of::<super::Status>),
    (
        "post",
        "/webhooks/payments/{plugin}",
        schema_of::<super::webhooks::Delivered>,
    ),
];

/// (method, path, schema) of every route that takes query parameters: one parameter per
/// property of the type its handler deserializes the query into.
const QUERIES: &[(&str, &str, SchemaOf)] = &[
    (
        "get",
        "/store/products",
        schema_of::<crate::catalog::ProductFilter>,
    ),
    (
        "get",
        "/store/recommendations",
        schema_of::<storefront::RecommendationQuery>,
    ),
    ("get", "/admin/orders", schema_of::<admin::OrderQuery>),
    ("get", "/admin/customers", schema_of::<admin::CustomerQuery>),
    ("post", "/admin/plugins", schema_of::<plugins::UploadQuery>),
    (
        "get",
        "/admin/plugins/{name}/audit",
        schema_of::<plugins::Limit>,
    ),
    (
        "get",
        "/admin/plugins/{name}/calls",
        schema_of::<plugins::Limit>,
    ),
];

/// (parameter, where its value comes from), in OpenAPI's runtime expressions.
type LinkParameters = &'static [(&'static str, &'static str)];

/// (from method, from path, to method, to path, parameters): where the answer of one route
/// supplies the ids (and the cart token) another takes — what a client, or a stateful API
/// fuzzer, follows from a new cart to its checkout and from an order to its refund.
const LINKS: &[(&str, &str, &str, &str, LinkParameters)] = &[
    ("post", "/store/carts", "get", "/store/carts/{id}", CART),
    (
        "post",
        "/store/carts",
        "post",
        "/store/carts/{id}/lines",
        CART,
    ),
    (
        "post",
        "/store/carts",
        "put",
        "/store/carts/{id}/coupons",
        CART,
    ),
    (
        "post",
        "/store/carts",
        "put",
        "/store/carts/{id}/details",
        CART,
    ),
    (
        "post",
        "/store/carts",
        "get",
        "/store/carts/{id}/shipping-methods",
        CART,
    ),
    (
        "post",
        "/store/carts",
        "put",
        "/store/carts/{id}/shipping-method",
        CART,
    ),
    (
        "post",
        "/store/carts",
        "post",
        "/store/carts/{id}/checkout",
        CART,
    ),
    (
        "post",
        "/store/carts/{id}/lines",
        "patch",
        "/store/carts/{id}/lines/{line}",
        LINE,
    ),
    (
        "post",
        "/store/carts/{id}/lines",
        "delete",
        "/store/carts/{id}/lines/{line}",
        LINE,
    ),
    (
        "post",
        "/store/carts/{id}/lines",
        "post",
        "/store/carts/{id}/checkout",
        SAME_CART,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        "get",
        "/admin/orders/{id}",
        ORDER,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        "post",
        "/admin/orders/{id}/fulfil",
        ORDER,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        "post",
        "/admin/orders/{id}/capture",
        ORDER,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        "post",
        "/admin/orders/{id}/cancel",
        ORDER,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        "post",
        "/admin/orders/{id}/refunds",
        ORDER,
    ),
    (
        "post",
        "/store/carts/{id}/checkout",
        "post",
        "/admin/orders/{id}/returns",
        ORDER,
    ),
    (
        "post",
        "/admin/orders/{id}/capture",
        "post",
        "/admin/orders/{id}/refunds",
        ORDER,
    ),
    (
        "post",
        "/admin/orders/{id}/fulfil",
        "post",
        "/admin/orders/{id}/returns",
        ORDER,
    ),
    ("post", "/admin/products", "get", "/admin/products/{id}", ID),
    (
        "post",
        "/admin/products",
        "patch",
        "/admin/products/{id}",
        ID,
    ),
    (
        "post",
        "/admin/products",
        "post",
        "/admin/products/{id}/archive",
        ID,
    ),
    ("post", "/admin/products", "get", "/store/products/{id}", ID),
    (
        "post",
        "/store/customers",
        "get",
        "/admin/customers/{id}",
        ID,
    ),
    (
        "post",
        "/store/customers",
        "put",
        "/admin/customers/{id}/tags",
        ID,
    ),
];
const CART: LinkParameters = &[
    ("id", "$response.body#/id"),
    ("header.X-Cart-Token", "$response.body#/token"),
];
const SAME_CART: LinkParameters = &[
    ("id", "$response.body#/id"),
    ("header.X-Cart-Token", "$request.header.X-Cart-Token"),
];
const LINE: LinkParameters = &[
    ("id", "$response.body#/id"),
    ("line", "$response.body#/lines/0/id"),
    ("header.X-Cart-Token", "$request.header.X-Cart-Token"),
];
const ORDER: LinkParameters = &[("id", "$response.body#/id")];
const ID: LinkParameters = ORDER;

/// An operation's id: its method and path, e.g. `post_store_carts_id_lines`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            segment
                .chars()
                .filter(|c| !matches!(c, '{' | '}'))
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

/// A path parameter's schema: what the route accepts, where it accepts less than any string.
fn path_parameter(name: &str) -> Value {
    let schema = match name {
        "hook" => json!({"type": "string", "enum": HookKind::ALL.map(HookKind::as_str)}),
        "capability" => {
            json!({"type": "string", "pattern": "^(secrets|http:[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?)$",
            "description": "`secrets`, `http:<host>` or `http:<host>:<port>`"})
        }
        "secret" => json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}),
        _ => json!({"type": "string"}),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

/// The query parameters `schema` (an object's schema, with its definitions inlined) stands for.
fn query_parameters(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut property = property.clone();
            // A query string has no null: an optional parameter is one left out.
            if let Some(types) = property["type"].as_array_mut() {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    property["type"] = only.clone();
                }
            }
            let description = property
                .as_object_mut()
                .and_then(|p| p.remove("description"));
            let mut parameter = json!({"name": name, "in": "query",
                "required": required.contains(&name.as_str()), "schema": property});
            if let Some(description) = description {
                parameter["description"] = description;
            }
            parameter
        })
        .collect()
}

/// The schema generator: JSON Schema 2020-12 (OpenAPI 3.1's), definitions kept under
/// `#/components/schemas`; for what the API reads unless `answers`.
fn generator(inline: bool, answers: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12();
    let settings = if answers {
        settings.for_serialize()
    } else {
        settings
    };
    settings
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
            s.inline_subschemas = inline;
        })
        .into_generator()
}

/// Adds the definitions of what the API answers to those of what it reads. A type both read
/// and answered (an address) may have two shapes: an optional field the API reads may be left
/// out, while the API always writes it. Such a definition is kept under its name with
/// `Answer` appended, and the references in the answers' schemas (`operations`, and
/// `answers` themselves) are changed to match.
fn merge_answers(
    schemas: &mut Map<String, Value>,
    answers: Map<String, Value>,
    operations: &mut Value,
) {
    let renamed: BTreeMap<String, String> = answers
        .iter()
        .filter(|(name, schema)| schemas.get(*name).is_some_and(|read| read != *schema))
        .map(|(name, _)| {
            (
                format!("#/components/schemas/{name}"),
                format!("#/components/schemas/{name}Answer"),
            )
        })
        .collect();
    fn rename(value: &mut Value, renamed: &BTreeMap<String, String>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    match (key.as_str(), &*item) {
                        ("$ref", Value::String(to)) if renamed.contains_key(to) => {
                            *item = Value::String(renamed[to].clone());
                        }
                        _ => rename(item, renamed),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| rename(item, renamed)),
            _ => {}
        }
    }
    // Only the answers' own schemas point at answer definitions.
    for responses in operations
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|methods| methods.values_mut())
        .filter_map(|operation| operation.get_mut("responses"))
    {
        rename(responses, &renamed);
    }
    for (name, mut schema) in answers {
        rename(&mut schema, &renamed);
        let key = format!("#/components/schemas/{name}");
        let name = match renamed.get(&key) {
            Some(to) => to.trim_start_matches("#/components/schemas/").to_owned(),
            None => name,
        };
        schemas.insert(name, schema);
    }
}

/// The OpenAPI document.
pub fn document() -> Value {
    let mut bodies = generator(false, false);
    let mut queries = generator(true, false);
    let mut answers = generator(false, true);
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, access, summary) in ROUTES {
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(path_parameter)
            .collect();
        if let Some((_, _, schema)) = QUERIES.iter().find(|(m, p, _)| m == method && p == path) {
            parameters.extend(query_parameters(schema(&mut queries).as_value()));
        }
        if matches!(access, Access::CartToken | Access::CartTokenIdempotent) {
            parameters.push(json!({"name": "X-Cart-Token", "in": "header", "required": false, "schema": {"type": "string"},
                "description": "The cart's secret token; not needed when its owner is signed in"}));
        }
        if matches!(
            access,
            Access::CartTokenIdempotent | Access::AdminIdempotent | Access::AdminMaybeIdempotent
        ) {
            let required = !matches!(access, Access::AdminMaybeIdempotent);
            parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": required,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "The first response is stored and replayed; another body with the same key is 422; while the first runs, 409."}));
        }
        let security = match access {
            Access::Admin | Access::AdminIdempotent | Access::AdminMaybeIdempotent => {
                json!([{"admin": []}])
            }
            Access::Signature => json!([{"webhookSignature": []}]),
            Access::Metrics => json!([{"metrics": []}, {"admin": []}]),
            Access::Customer => json!([{"customer": []}]),
            // A signed-in owner may open their cart with their customer token instead.
            Access::CartToken | Access::CartTokenIdempotent => json!([{}, {"customer": []}]),
            Access::Anyone => json!([]),
        };
        let mut success = if *path == "/metrics" {
            json!({"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}})
        } else if let Some((_, _, schema)) =
            RESPONSES.iter().find(|(m, p, _)| m == method && p == path)
        {
            json!({"description": "Success", "content": {"application/json": {"schema": schema(&mut answers)}}})
        } else {
            json!({"description": "Success", "content": {"application/json": {}}})
        };
        let links: Map<String, Value> = LINKS
            .iter()
            .filter(|(m, p, ..)| m == method && p == path)
            .map(|(_, _, to_method, to_path, parameters)| {
                let target = operation_id(to_method, to_path);
                let parameters: Map<String, Value> = parameters
                    .iter()
                    .map(|(name, from)| ((*name).to_owned(), json!(from)))
                    .collect();
                (
                    target.clone(),
                    json!({"operationId": target, "parameters": parameters}),
                )
            })
            .collect();
        if !links.is_empty() {
            success["links"] = Value::Object(links);
        }
        let mut operation = json!({
            "operationId": operation_id(method, path),
            "summary": summary,
            "parameters": parameters,
            "security": security,
            "responses": {
                "2XX": success,
                "4XX": {"description": "The caller's mistake", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "5XX": {"description": "A failing plugin (502, with its named error) or an internal failure", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            }
        });
        if let Some((_, _, schema, required)) = JSON_BODIES
            .iter()
            .find(|(m, p, _, _)| m == method && p == path)
        {
            let mut schema = Value::from(schema(&mut bodies));
            if !required {
                // Left out, empty or `null`: the defaults.
                schema = json!({"anyOf": [schema, {"type": "null"}]});
            }
            operation["requestBody"] = json!({"required": required,
                "content": {"application/json": {"schema": schema}}});
        } else if (*method, *path) == ("post", "/admin/plugins") {
            operation["requestBody"] = json!({"required": true, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["manifest", "component"],
                "properties": {"manifest": {"type": "string", "description": "The plugin.toml"},
                               "component": {"type": "string", "contentMediaType": "application/wasm",
                                             "description": "The component (.wasm)"}}}}}});
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert((*method).to_owned(), operation);
        }
    }
    let mut schemas = bodies.take_definitions(true);
    let mut operations = Value::Object(std::mem::take(&mut paths));
    merge_answers(
        &mut schemas,
        answers.take_definitions(true),
        &mut operations,
    );
    let Value::Object(paths) = operations else {
        unreachable!("the paths were an object")
    };
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string", "description": "Stable, machine-readable"},
                               "message": {"type": "string"}}}}
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Cartridge", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Commerce whose business rules are sandboxed WebAssembly plugins."},
        "paths": paths,
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"},
                                "customer": {"type": "http", "scheme": "bearer"},
                                "metrics": {"type": "http", "scheme": "bearer",
                                    "description": "The host's scrape-only token (`--metrics-token`)"},
                                "webhookSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature",
                                    "description": "Verified by the connector plugin with its secret; the header is the connector's own (Stripe-Signature for Stripe)"}},
            "schemas": schemas,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{
        JSON_BODIES, LINKS, QUERIES, RESPONSES, document, documented_routes, operation_id,
    };

    /// The API's route modules and where the router nests them.
    const ROUTERS: &[(&str, &str)] = &[
        ("", include_str!("mod.rs")),
        ("/admin", include_str!("admin.rs")),
        ("/admin", include_str!("plugins.rs")),
        ("/store", include_str!("storefront.rs")),
        ("/webhooks", include_str!("webhooks.rs")),
    ];

    /// (method, path) of every `.route(…)` in the route modules' source.
    fn routed() -> BTreeSet<(String, String)> {
        let mut routes = BTreeSet::new();
        for (prefix, source) in ROUTERS {
            for (at, _) in source.match_indices(".route(") {
                let rest = source[at + ".route(".len()..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some((path, rest)) = rest.split_once('"') else {
                    continue;
                };
                // The call's arguments: up to the parenthesis that closes `.route(`.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i);
                let arguments = &rest[..end];
                for method in ["get", "post", "put", "patch", "delete"] {
                    let called = arguments
                        .match_indices(&format!("{method}("))
                        .any(|(i, _)| {
                            i == 0
                                || !arguments[..i]
                                    .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                        });
                    if called {
                        routes.insert((method.to_owned(), format!("{prefix}{path}")));
                    }
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_the_router_serves_is_documented() {
        let routed = routed();
        assert!(routed.len() > 50, "the source scan found {routed:?}");
        let documented: BTreeSet<(String, String)> = documented_routes()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        assert!(undocumented.is_empty(), "not in ROUTES: {undocumented:?}");
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(unrouted.is_empty(), "documented, not routed: {unrouted:?}");
    }

    #[test]
    fn every_body_query_and_link_names_a_documented_route() {
        let documented: BTreeSet<(&str, &str)> = documented_routes().collect();
        for (method, path, ..) in JSON_BODIES {
            assert!(
                documented.contains(&(*method, *path)),
                "body of {method} {path}"
            );
        }
        for (method, path, _) in QUERIES {
            assert!(
                documented.contains(&(*method, *path)),
                "query of {method} {path}"
            );
        }
        for (method, path, to_method, to_path, _) in LINKS {
            assert!(
                documented.contains(&(*method, *path)),
                "link from {method} {path}"
            );
            assert!(
                documented.contains(&(*to_method, *to_path)),
                "link to {to_method} {to_path}"
            );
        }
    }

    /// A handler that reads a body has its schema in the document; one that reads none is
    /// named here, so that a new body cannot go undocumented.
    #[test]
    fn every_write_route_documents_its_body_or_takes_none() {
        const BODILESS: &[(&str, &str)] = &[
            ("post", "/admin/products/{id}/archive"),
            ("post", "/admin/orders/{id}/cancel"),
            ("post", "/admin/plugins/{name}/rollback"),
            ("post", "/admin/plugins/{name}/disable"),
            ("post", "/admin/plugins/{name}/enable"),
            ("put", "/admin/plugins/{name}/grants/{capability}"),
            ("delete", "/admin/plugins/{name}/grants/{capability}"),
            ("delete", "/admin/plugins/{name}/secrets/{secret}"),
            ("delete", "/store/carts/{id}/lines/{line}"),
            ("delete", "/admin/checkout-attempts/{id}"),
        ];
        let doc = document();
        for (method, path) in documented_routes() {
            let operation = &doc["paths"][path][method];
            assert_eq!(operation["operationId"], operation_id(method, path));
            if method == "get" {
                assert!(operation.get("requestBody").is_none(), "{method} {path}");
                continue;
            }
            let has_body = operation.get("requestBody").is_some();
            assert_eq!(
                has_body,
                !BODILESS.contains(&(method, path)),
                "{method} {path}: a body documented for a route that takes none, or missing"
            );
        }
    }

    #[test]
    fn schemas_resolve_and_state_what_the_handlers_refuse() {
        let doc = document();
        let text = doc.to_string();
        // Every reference points at a schema the document has.
        for (at, _) in text.match_indices("\"$ref\":\"#/components/schemas/") {
            let name = &text[at + "\"$ref\":\"#/components/schemas/".len()..];
            let name = &name[..name.find('"').expect("closing quote")];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref to {name}"
            );
        }
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["NewLine"]["properties"]["quantity"]["minimum"], 1);
        assert_eq!(schemas["NewLine"]["properties"]["quantity"]["maximum"], 999);
        assert_eq!(schemas["NewLine"]["additionalProperties"], false);
        assert_eq!(schemas["ShippingChoice"]["required"][0], "code");
        // Query parameters are never `null` (a query string cannot say it).
        let products = &doc["paths"]["/store/products"]["get"]["parameters"];
        let limit = products
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "limit"))
            .expect("limit");
        assert_eq!(limit["schema"]["type"], "integer");
        assert_eq!(limit["required"], false);
        let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["2XX"]["content"];
        assert!(metrics.get("text/plain").is_some());
    }

    /// Every cart route answers with the priced cart, documented from the type the handlers
    /// serialize; a shape both read and answered (an address: optional on the way in, always
    /// written on the way out) gets a definition for each, and each side points at its own.
    #[test]
    fn answers_are_documented_from_the_types_the_handlers_send() {
        let doc = document();
        let documented: BTreeSet<(&str, &str)> = documented_routes().collect();
        for (method, path, _) in RESPONSES {
            assert!(documented.contains(&(*method, *path)), "{method} {path}");
            let answer = if *path == "/health" || *path == "/ready" {
                "#/components/schemas/Status"
            } else if path.starts_with("/webhooks/") {
                "#/components/schemas/Delivered"
            } else if path.starts_with("/admin/plugins") || path.starts_with("/admin/hooks/") {
                match (*method, path.rsplit('/').next()) {
                    ("get", Some("plugins")) => "#/components/schemas/PluginList",
                    ("post", Some("plugins")) => "#/components/schemas/Uploaded",
                    (_, Some("audit")) => "#/components/schemas/AuditLog",
                    (_, Some("calls")) => "#/components/schemas/CallLog",
                    (_, Some("replay")) => "#/components/schemas/ReplayReport",
                    (_, Some("invoke")) => "#/components/schemas/Invocation",
                    (_, Some("order")) => "#/components/schemas/HookOrder",
                    _ => "#/components/schemas/StoredPlugin",
                }
            } else if path.ends_with("/shipping-methods") && path.starts_with("/store") {
                "#/components/schemas/ShippingOffers"
            } else if path.starts_with("/admin/shipping-methods/")
                || *method == "post" && path.ends_with("/shipping-methods")
            {
                "#/components/schemas/ShippingMethod"
            } else if path.ends_with("/shipping-methods") {
                "#/components/schemas/ShippingMethods"
            } else if path.ends_with("/categories") {
                "#/components/schemas/CategoryAnswer"
            } else if path.ends_with("/locations") {
                "#/components/schemas/LocationAnswer"
            } else if path.ends_with("/adjust") {
                "#/components/schemas/StockLevel"
            } else if path.starts_with("/admin/inventory/") {
                "#/components/schemas/StockLevels"
            } else if *path == "/admin/customers" {
                "#/components/schemas/ProfileList"
            } else if path.starts_with("/admin/customers/") {
                "#/components/schemas/Profile"
            } else if path.ends_with("/checkout-attempts") {
                "#/components/schemas/CheckoutAttempts"
            } else if path.starts_with("/admin/checkout-attempts/") {
                "#/components/schemas/Dismissed"
            } else if path.starts_with("/store/carts") && !path.ends_with("/checkout") {
                "#/components/schemas/PricedCartBody"
            } else if path.ends_with("/orders") {
                "#/components/schemas/OrderList"
            } else if path.starts_with("/store/orders/") && path.ends_with("/returns") {
                "#/components/schemas/ReturnRequested"
            } else if path.ends_with("/customers") {
                "#/components/schemas/Customer"
            } else if path.ends_with("/login") {
                "#/components/schemas/SignedInBody"
            } else if path.contains("/orders/") || path.ends_with("/checkout") {
                "#/components/schemas/OrderView"
            } else if path.ends_with("/products") && *method == "get"
                || path.ends_with("/recommendations")
            {
                "#/components/schemas/ProductPage"
            } else {
                "#/components/schemas/Product"
            };
            assert_eq!(
                doc["paths"][path][method]["responses"]["2XX"]["content"]["application/json"]["schema"]
                    ["$ref"],
                answer,
                "{method} {path}"
            );
        }
        // Every route of the plugin registry documents its answer.
        for (method, path) in documented_routes()
            .filter(|(_, p)| p.starts_with("/admin/plugins") || p.starts_with("/admin/hooks/"))
        {
            assert!(
                RESPONSES.iter().any(|(m, p, _)| (*m, *p) == (method, path)),
                "{method} {path} has no schema for its answer"
            );
        }
        let schemas = &doc["components"]["schemas"];
        let required = |schema: &str| -> BTreeSet<String> {
            schemas[schema]["required"]
                .as_array()
                .unwrap_or_else(|| panic!("{schema} lists no required properties"))
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        };
        // A plugin's optional parts are written as null, never left out.
        for always in ["active_version", "serving_here", "tripped_at", "config"] {
            assert!(required("StoredPlugin").contains(always), "{always}");
        }
        let plugin = &schemas["StoredPlugin"]["properties"];
        assert_eq!(plugin["hook"]["$ref"], "#/components/schemas/HookKind");
        assert_eq!(
            plugin["versions"]["items"]["$ref"],
            "#/components/schemas/PluginVersion"
        );
        // An invocation's priced cart is the pricing's own (null for the other hooks).
        assert!(
            schemas["Invocation"]["properties"]["priced"]
                .to_string()
                .contains("#/components/schemas/PricedCart")
        );
        assert!(required("Invocation").contains("priced"));
        let cart = &schemas["PricedCartBody"];
        let required: BTreeSet<&str> = cart["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(serde_json::Value::as_str)
            .collect();
        // Always sent, though null when nothing is chosen; the token only when a cart is made.
        assert!(required.contains("shipping_method"));
        assert!(!required.contains("token"));
        let order = &schemas["OrderView"]["properties"];
        assert_eq!(
            order["shipping_address"]["$ref"],
            "#/components/schemas/AddressAnswer"
        );
        assert_eq!(
            order["fulfilments"]["items"]["$ref"],
            "#/components/schemas/FulfilmentView"
        );
        // The details a cart answers with point at the address as written, which has every
        // field; the checkout body at the address as read, whose optional fields may be left out.
        let answered = &schemas["CartDetailsAnswer"];
        assert!(
            answered
                .to_string()
                .contains("#/components/schemas/AddressAnswer")
        );
        assert!(
            schemas["AddressAnswer"]["required"]
                .as_array()
                .expect("required")
                .contains(&serde_json::json!("line2"))
        );
        assert!(
            !schemas["Address"]["required"]
                .as_array()
                .expect("required")
                .contains(&serde_json::json!("line2"))
        );
    }
}
