//! The floor of the benchmarks: one header read, one header set, nothing else. Whatever this
//! costs in Envoy (VM dispatch, context creation, host calls) every proxy-wasm filter pays.
//!
//! Built with the `trap-on-header` feature (tests only, `floor_trap.wasm`), a request carrying
//! `x-edgeguard-trap` kills the VM the way a panic would, so the tests can show what Envoy's
//! `failure_policy` does with a dead VM.

#[cfg(target_arch = "wasm32")]
mod wasm {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::{Action, MapType};

    proxy_wasm::main! {{
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Floor) });
    }}

    struct Floor;

    impl Context for Floor {}

    impl HttpContext for Floor {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            #[cfg(feature = "trap-on-header")]
            if let Ok(Some(_)) =
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-edgeguard-trap")
            {
                // With `panic = "abort"` a panic ends in exactly this instruction: the VM traps
                // and Envoy marks it failed.
                core::arch::wasm32::unreachable();
            }
            if let Ok(Some(v)) =
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "authorization")
            {
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "x-auth-length",
                    Some(v.len().to_string().as_bytes()),
                );
            }
            Action::Continue
        }
    }
}
