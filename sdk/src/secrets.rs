//! Secrets (API keys, webhook signing secrets), for plugins granted `secrets`.
//!
//! The operator sets where each secret is (`PUT /admin/plugins/{name}/secrets/{secret}` with an
//! environment variable or a file); the host reads it at each call. Values never pass through
//! the host's database, and the host blanks them out of the plugin's log lines. Don't put them
//! in outputs or errors.
//!
//! Outside WebAssembly (native unit tests) there is no host: [`get`] answers `None`.

/// The secret called `name`, or `None` if the operator has not set it (or it cannot be read).
pub fn get(name: &str) -> Option<String> {
    #[cfg(target_arch = "wasm32")]
    {
        // Keeps the capabilities' component-type section in any plugin that reads secrets.
        #[used]
        static CAPABILITIES_WORLD: &[u8] =
            &crate::__private::capabilities::__WIT_BINDGEN_COMPONENT_TYPE;
        crate::__private::capabilities::cartridge::capabilities::secrets::get(name)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = name;
        None
    }
}
