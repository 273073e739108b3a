//! Outbound HTTP, for plugins granted `http:<host>` or `http:<host>:<port>` (a payment
//! connector calling its gateway, say).
//!
//! Ask for the hosts in `plugin.toml` (`capabilities = ["http:api.example.com"]`); an operator
//! grants them. A request to any other host stops the call with `capability_denied`. The host
//! follows no redirects, bounds each request by the call's deadline, and caps the response body
//! at 1 MiB.
//!
//! ```no_run
//! use cartridge_sdk::http::{self, Request};
//!
//! let response = http::send(&Request::post("https://api.example.com/v1/charges")
//!     .header("authorization", "Bearer sk_test_123")
//!     .form(&[("amount", "1999"), ("currency", "eur")]));
//! ```
//!
//! Outside WebAssembly (native unit tests) there is no host: [`send`] answers
//! `HttpError::Connection`.

pub use crate::__private::capabilities::cartridge::capabilities::http::{
    HttpError, Request, Response,
};

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_owned(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A GET request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A POST request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets an `application/x-www-form-urlencoded` body.
    pub fn form(mut self, fields: &[(&str, &str)]) -> Self {
        self.body = form_encode(fields).into_bytes();
        self.header("content-type", "application/x-www-form-urlencoded")
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Gives up sooner than the host's limit.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `application/x-www-form-urlencoded`, as HTML forms and Stripe's API encode fields.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, text: &str) {
        for b in text.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    out.push(char::from(b));
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, key);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

/// Sends `request` and waits for the whole response.
pub fn send(request: &Request) -> Result<Response, HttpError> {
    #[cfg(target_arch = "wasm32")]
    {
        // Keeps the capabilities' component-type section in any plugin that sends requests.
        #[used]
        static CAPABILITIES_WORLD: &[u8] =
            &crate::__private::capabilities::__WIT_BINDGEN_COMPONENT_TYPE;
        crate::__private::capabilities::cartridge::capabilities::http::send(request)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = request;
        Err(HttpError::Connection(
            "no host outside WebAssembly".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_encoded_like_a_browser_does() {
        assert_eq!(
            form_encode(&[("amount", "1999"), ("metadata[order]", "a b&c=d/é")]),
            "amount=1999&metadata%5Border%5D=a+b%26c%3Dd%2F%C3%A9"
        );
        let r = Request::post("https://x.test/v1").form(&[("a", "1")]);
        assert_eq!(r.body, b"a=1");
        assert_eq!(
            r.headers,
            [(
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned()
            )]
        );
    }
}
