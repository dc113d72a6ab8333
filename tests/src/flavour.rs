//! The two builds of each filter: proxy-wasm (`<filter>.wasm` in V8) and native
//! (`libedgeguard_<filter>.so`, an Envoy dynamic module). The integration tests of the filters
//! run once per flavour ([`flavoured!`](crate::flavoured)), loading the filter either way with
//! the same configuration.

use serde_json::Value;

use crate::envoy::{dynamic_module_filter, wasm_filter, wasm_filter_with_policy};
use crate::tools;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Wasm,
    Native,
}

impl Flavour {
    /// The HTTP filter running `filter` (`jwt_shape`, `portal_auth`) with `configuration` (the
    /// JSON the filter parses). `env`: variables the wasm VM may read (host_env_keys); a native
    /// module reads Envoy's process environment directly.
    pub fn filter(self, filter: &str, configuration: &str, env: &[&str]) -> Value {
        match self {
            Flavour::Wasm => wasm_filter(filter, &tools::wasm(filter), configuration, env),
            Flavour::Native => {
                let module = format!("edgeguard_{filter}");
                // fail with the harness's message when the module was not built
                tools::native_module(&module);
                dynamic_module_filter(&module, filter, configuration)
            }
        }
    }

    /// [`Flavour::filter`] with a wasm `failure_policy` (ignored natively: a dynamic module has
    /// no VM to fail or reload).
    pub fn filter_with_policy(
        self,
        filter: &str,
        configuration: &str,
        env: &[&str],
        failure_policy: &str,
    ) -> Value {
        match self {
            Flavour::Wasm => wasm_filter_with_policy(
                filter,
                &tools::wasm(filter),
                configuration,
                env,
                failure_policy,
            ),
            Flavour::Native => self.filter(filter, configuration, env),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavour::Wasm => "wasm",
            Flavour::Native => "native",
        }
    }
}

/// Runs each listed test function (taking a [`Flavour`]) once per flavour, as
/// `wasm::<name>` and `native::<name>`.
#[macro_export]
macro_rules! flavoured {
    ($($name:ident),* $(,)?) => {
        mod wasm {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::flavour::Flavour::Wasm)
                }
            )*
        }
        mod native {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::flavour::Flavour::Native)
                }
            )*
        }
    };
}
