//! The floor of the benchmarks: one header read, one header set, nothing else. Whatever this
//! costs in Envoy (VM dispatch, context creation, host calls) every proxy-wasm filter pays.

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
            if let Ok(Some(v)) =
                hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization")
            {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "x-auth-length",
                    Some(&v.len().to_string()),
                );
            }
            Action::Continue
        }
    }
}
