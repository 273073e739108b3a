//! One error type at the HTTP boundary: a status, a stable code and a message, as
//! `{"error": {"code": …, "message": …}}`. Internal failures are logged with their cause and
//! answered with an opaque 500; nothing internal is echoed.

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::carts::CartError;
use crate::catalog::CatalogError;
use crate::customers::CustomerError;
use crate::inventory::InventoryError;
use crate::orders::OrderError;
use crate::plugin::HookError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A server-side failure that retrying with the same idempotency key cannot mend: stored
    /// and replayed like a client error.
    final_answer: bool,
    /// Seconds until a retry may succeed: sent as `Retry-After`.
    retry_after: Option<i64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            final_answer: false,
            retry_after: None,
        }
    }

    /// Marks a server-side failure as the final answer for its idempotency key.
    pub fn final_answer(mut self) -> Self {
        self.final_answer = true;
        self
    }

    /// Whether this answer stands for its idempotency key even though it is a server error.
    pub fn is_final(&self) -> bool {
        self.final_answer || !self.status.is_server_error()
    }

    /// 401: no credential, or one that opens nothing here.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    /// 404 for `what`.
    pub fn not_found(code: &'static str, what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, what)
    }

    /// 422: well-formed but unacceptable input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    /// 500, logging the cause.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl ApiError {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds.max(1)),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match rejection {
            JsonRejection::JsonDataError(_) => "invalid_input",
            JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "malformed_json",
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "unreadable_body"
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}

impl From<HookError> for ApiError {
    fn from(e: HookError) -> Self {
        // The plugin failed, not the caller and not the host.
        Self::new(StatusCode::BAD_GATEWAY, e.code(), e.to_string())
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let status = match &e {
            CatalogError::Invalid(_) | CatalogError::UnknownCategory(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            CatalogError::SkuTaken(_) => StatusCode::CONFLICT,
            CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
            CatalogError::Database(cause) => return Self::internal(cause),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<CartError> for ApiError {
    fn from(e: CartError) -> Self {
        let status = match &e {
            CartError::NotFound | CartError::LineNotFound => StatusCode::NOT_FOUND,
            CartError::NotForSale(_)
            | CartError::Invalid(_)
            | CartError::ShippingUnavailable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CartError::Database(cause) => return Self::internal(cause),
            CartError::Catalog(cause) => return Self::internal(cause),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        let status = match &e {
            InventoryError::Insufficient { .. } | InventoryError::WouldGoNegative { .. } => {
                StatusCode::CONFLICT
            }
            InventoryError::UnknownSku(_) | InventoryError::UnknownLocation(_) => {
                StatusCode::NOT_FOUND
            }
            InventoryError::InvalidQuantity(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InventoryError::Expired(_) | InventoryError::NothingTo { .. } => StatusCode::CONFLICT,
            InventoryError::Database(cause) => return Self::internal(cause),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Hook(hook) => hook.into(),
            OrderError::Inventory(inventory) => inventory.into(),
            OrderError::Cart(cart) => cart.into(),
            OrderError::Database(cause) => Self::internal(&cause),
            OrderError::Denied(reasons) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "checkout_denied",
                format!(
                    "checkout refused by the fraud check: {}",
                    reasons.join(", ")
                ),
            ),
            OrderError::Shipping(refusal) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                match refusal {
                    crate::shipping::Refusal::Required(_) => "shipping_method_required",
                    crate::shipping::Refusal::Unavailable(_) => "shipping_unavailable",
                },
                refusal.to_string(),
            ),
            OrderError::PaymentRefused { code, message } => Self::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_refused",
                format!("{message} ({code})"),
            ),
            other => {
                let (status, code) = match &other {
                    OrderError::EmptyCart => (StatusCode::UNPROCESSABLE_ENTITY, "empty_cart"),
                    OrderError::Unavailable(_) => (StatusCode::CONFLICT, "not_for_sale"),
                    OrderError::NoPaymentConnector => {
                        (StatusCode::SERVICE_UNAVAILABLE, "no_payment_connector")
                    }
                    OrderError::NotFound => (StatusCode::NOT_FOUND, "order_not_found"),
                    OrderError::InvalidTransition { .. } => {
                        (StatusCode::CONFLICT, "invalid_transition")
                    }
                    OrderError::CartOrdered(_) => (StatusCode::CONFLICT, "cart_already_ordered"),
                    OrderError::KeyTaken => (StatusCode::CONFLICT, "request_in_progress"),
                    OrderError::GatewayUnavailable => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "payment_gateway_unavailable",
                    ),
                    OrderError::Aborted => {
                        return Self::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "checkout_aborted",
                            other.to_string(),
                        )
                        .final_answer();
                    }
                    OrderError::RefundTooLarge { .. } => {
                        (StatusCode::CONFLICT, "refund_exceeds_captured")
                    }
                    OrderError::CaptureTooLarge { .. } => {
                        (StatusCode::CONFLICT, "capture_exceeds_authorized")
                    }
                    OrderError::CaptureInProgress { .. } => {
                        (StatusCode::CONFLICT, "capture_in_progress")
                    }
                    _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
                };
                Self::new(status, code, other.to_string())
            }
        }
    }
}

impl From<crate::shipping::ShippingError> for ApiError {
    fn from(e: crate::shipping::ShippingError) -> Self {
        use crate::shipping::ShippingError as E;
        let status = match &e {
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::CodeTaken(_) => StatusCode::CONFLICT,
            E::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Database(cause) => return Self::internal(cause),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<CustomerError> for ApiError {
    fn from(e: CustomerError) -> Self {
        let status = match &e {
            CustomerError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            CustomerError::EmailTaken => StatusCode::CONFLICT,
            CustomerError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            CustomerError::NotFound => StatusCode::NOT_FOUND,
            CustomerError::TooManyAttempts { retry_after_secs } => {
                let mut refused = Self::new(StatusCode::TOO_MANY_REQUESTS, e.code(), e.to_string());
                refused.retry_after = Some(*retry_after_secs);
                return refused;
            }
            CustomerError::Hashing => return Self::internal(&e),
            CustomerError::Database(cause) => return Self::internal(cause),
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError as E;
        let status = match &e {
            E::Rejected { .. } | E::UnknownCapability(_) | E::Invalid(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            E::UnknownPlugin(_) | E::UnknownVersion(..) => StatusCode::NOT_FOUND,
            E::VersionExists(..)
            | E::HookMismatch { .. }
            | E::NoPreviousVersion(_)
            | E::NotGranted(..) => StatusCode::CONFLICT,
            E::Database(cause) => return Self::internal(cause),
        };
        Self::new(status, e.code(), e.to_string())
    }
}
