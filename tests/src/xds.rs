//! `edgeguard xds` as a real process, and Envoys started from the repository's xDS bootstrap
//! (`envoy/xds/bootstrap.yaml`) that get everything else from it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::envoy::metric_value;
use crate::http;
use crate::process::{free_port, wait_for_port, Proc};

/// Writes a file atomically (temp file + rename), as editors and config management do, so
/// the watcher never reads a half-written file.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// GET through Envoy with a client that stops at the end of the body (Envoy delays closing
/// connections after local replies by `delayed_close_timeout`, 1 s, which a read-to-EOF
/// client would wait out). A fresh connection per request, so new config is seen at once.
pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<http::Resp> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .ok()?;
    let mut req = client.get(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().ok()?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = resp.text().ok()?;
    Some(http::Resp {
        status,
        headers,
        body,
    })
}

/// Polls `f` every 20 ms until it returns true; the time it took, or `None` after `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A running `edgeguard xds`.
pub struct XdsServer {
    pub port: u16,
    pub metrics_port: u16,
    pub config: PathBuf,
    pub proc: Proc,
    dir: tempfile::TempDir,
    starts: u32,
}

impl XdsServer {
    /// Starts `edgeguard xds --config <config>` on free ports and waits for `/healthz`.
    pub fn start(config: &Path) -> XdsServer {
        XdsServer::try_start(config)
            .unwrap_or_else(|log| panic!("edgeguard xds did not start:\n{log}"))
    }

    /// `Err(log)` when it exits instead of serving.
    pub fn try_start(config: &Path) -> Result<XdsServer, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, metrics_port) = (free_port(), free_port());
        let proc = spawn(config, port, metrics_port, &dir.path().join("xds-1.log"));
        let mut s = XdsServer {
            port,
            metrics_port,
            config: config.to_path_buf(),
            proc,
            dir,
            starts: 1,
        };
        s.wait_healthy()?;
        Ok(s)
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if !self.proc.running() {
                return Err(self.proc.log_text());
            }
            if http::get(self.metrics_port, "/healthz", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not healthy after 20 s\n{}", self.proc.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (Envoy keeps running on what it has).
    pub fn kill(&mut self) {
        self.proc.stop();
    }

    /// Starts it again on the same ports (a fresh process, fresh counters).
    pub fn restart(&mut self) {
        self.proc.stop();
        self.starts += 1;
        let log = self.dir.path().join(format!("xds-{}.log", self.starts));
        self.proc = spawn(&self.config, self.port, self.metrics_port, &log);
        assert!(
            wait_for_port(self.port, Duration::from_secs(20)),
            "xds did not come back"
        );
        self.wait_healthy()
            .unwrap_or_else(|log| panic!("edgeguard xds did not restart:\n{log}"));
    }

    pub fn metrics(&self) -> String {
        http::get(self.metrics_port, "/metrics", &[])
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// A metric summed over its label sets (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name)
    }

    /// One labelled sample, e.g. `metric_with("edgeguard_xds_nacks_total", "type=\"ecds\"")`.
    pub fn metric_with(&self, name: &str, labels: &str) -> f64 {
        let prefix = format!("{name}{{{labels}}} ");
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// `/status` as JSON.
    pub fn status(&self) -> Value {
        http::get(self.metrics_port, "/status", &[])
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null)
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

fn spawn(config: &Path, port: u16, metrics_port: u16, log: &Path) -> Proc {
    let mut cmd = Command::new(crate::tools::edgeguard());
    cmd.arg("xds")
        .arg("--config")
        .arg(config)
        .args(["--port", &port.to_string()])
        .args(["--metrics-port", &metrics_port.to_string()])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    Proc::spawn("edgeguard xds", cmd, log)
}

/// An Envoy started from `envoy/xds/bootstrap.yaml`, with the native modules' search path
/// ([`crate::tools::native_dir`]) and the store token in its environment.
pub struct XdsEnvoy {
    pub admin_port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl XdsEnvoy {
    /// Starts Envoy as node `id` of `cluster`, pointed at the ADS port, and waits until it is
    /// initialized (its first listeners, routes, clusters and filter configs arrived).
    pub fn start(id: &str, cluster: &str, xds_port: u16) -> XdsEnvoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let bootstrap = crate::tools::repo_file("envoy/xds/bootstrap.yaml")
            .replace("{{NODE_ID}}", id)
            .replace("{{NODE_CLUSTER}}", cluster)
            .replace("{{ADMIN_PORT}}", "0")
            .replace("{{XDS_PORT}}", &xds_port.to_string());
        let file = dir.path().join("bootstrap.yaml");
        std::fs::write(&file, bootstrap).expect("write bootstrap");
        let admin_file = dir.path().join("admin.txt");
        let mut cmd = Command::new(crate::tools::envoy());
        cmd.arg("-c")
            .arg(&file)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            // `runtime: native` filters: Envoy loads lib<module>.so from here
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                crate::tools::native_dir(),
            )
            // portal-auth's store token (a wasm VM gets it through `env`, a native module
            // reads it here), as the other harness's Envoys have it
            .env("EDGEGUARD_STORE_TOKEN", crate::authz::STORE_TOKEN);
        let mut proc = Proc::spawn("envoy", cmd, &dir.path().join("envoy.log"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin_port = loop {
            assert!(proc.running(), "Envoy exited:\n{}", proc.log_text());
            let port = std::fs::read_to_string(&admin_file).ok().and_then(|s| {
                s.trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            });
            if let Some(p) = port {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "no admin address:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        loop {
            assert!(proc.running(), "Envoy exited:\n{}", proc.log_text());
            let live = http::get(admin_port, "/ready", &[]).is_ok_and(|r| r.body.trim() == "LIVE");
            if live {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready after 30 s:\n{}",
                proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        XdsEnvoy {
            admin_port,
            proc,
            _dir: dir,
        }
    }

    /// A counter or gauge from `/stats` (e.g.
    /// `extension_config_discovery.http_filter.jwt-shape.update_rejected`); 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let body = http::get(self.admin_port, &format!("/stats?filter={name}"), &[])
            .map(|r| r.body)
            .unwrap_or_default();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        http::get(self.admin_port, "/stats/prometheus", &[])
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// The `@type` of the filter configuration Envoy runs under ECDS name `name` ("" when it
    /// has none), from `/config_dump?resource=ecds_filters`.
    pub fn ecds_type(&self, name: &str) -> String {
        let dump: Value = http::get(self.admin_port, "/config_dump?resource=ecds_filters", &[])
            .ok()
            .and_then(|r| serde_json::from_str(&r.body).ok())
            .unwrap_or(Value::Null);
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["ecds_filter"]["name"] == name)
            .and_then(|c| c["ecds_filter"]["typed_config"]["@type"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}
