//! `/openapi.json`: the API's routes, who may call them, and the error convention, as an
//! OpenAPI 3.1 document. The route table here is checked against the router by the API tests
//! (every documented route answers), so the document cannot drift into routes that do not
//! exist.

use serde_json::{Map, Value, json};

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
        "Log in: a bearer token valid for 30 days",
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

/// The OpenAPI document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for (method, path, access, summary) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut headers: Vec<Value> = params;
        if matches!(access, Access::CartToken | Access::CartTokenIdempotent) {
            headers.push(json!({"name": "X-Cart-Token", "in": "header", "required": false, "schema": {"type": "string"},
                "description": "The cart's secret token; not needed when its owner is signed in"}));
        }
        if matches!(
            access,
            Access::CartTokenIdempotent | Access::AdminIdempotent | Access::AdminMaybeIdempotent
        ) {
            let required = !matches!(access, Access::AdminMaybeIdempotent);
            headers.push(json!({"name": "Idempotency-Key", "in": "header", "required": required,
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
        let operation = json!({
            "summary": summary,
            "parameters": headers,
            "security": security,
            "responses": {
                "2XX": {"description": "Success", "content": {"application/json": {}}},
                "4XX": {"description": "The caller's mistake", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "5XX": {"description": "A failing plugin (502, with its named error) or an internal failure", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            }
        });
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert((*method).to_owned(), operation);
        }
    }
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
            "schemas": {"Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string", "description": "Stable, machine-readable"},
                                   "message": {"type": "string"}}}}
            }}
        }
    })
}
