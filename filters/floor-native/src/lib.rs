//! The floor of the benchmarks as a native module: one header read, one header set, nothing
//! else (what filters/floor does in V8). Whatever this costs in Envoy, every native module pays.

use edgeguard_dynamic_module::{
    declare_http_filter, ConfigEnv, EnvoyHttpFilter, Filter, FilterConfig, HeadersStatus,
};

declare_http_filter!(new_config);

fn new_config(
    _name: &str,
    _config: &[u8],
    _env: &ConfigEnv,
) -> Result<Box<dyn FilterConfig>, String> {
    Ok(Box::new(Floor))
}

struct Floor;

impl FilterConfig for Floor {
    fn new_filter(&self) -> Box<dyn Filter> {
        Box::new(Floor)
    }
}

impl Filter for Floor {
    fn on_request_headers(
        &mut self,
        f: &mut EnvoyHttpFilter,
        _end_of_stream: bool,
    ) -> HeadersStatus {
        let len = f.request_header(b"authorization").map(<[u8]>::len);
        if let Some(len) = len {
            f.set_request_header(b"x-auth-length", len.to_string().as_bytes());
        }
        HeadersStatus::Continue
    }
}
