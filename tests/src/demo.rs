//! `make run`'s script (`envoy/demo/run.sh`) started on free ports, as the demo and browser
//! tests use it: the lines it printed up to `ready`, and a stop that stops everything it started.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::flavour::Flavour;
use crate::process::free_port;
use crate::tools;

/// The ports the demo was given.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub port: u16,
    pub ext: u16,
    pub admin: u16,
    pub authz: u16,
    pub authz_http: u16,
    pub echo: u16,
    pub gatekeeper: u16,
    pub gatekeeper_shape: u16,
    pub enroll: u16,
    pub devices: u16,
}

/// A running demo.
pub struct Demo {
    pub child: Child,
    pub ports: Ports,
    /// What the script printed before `ready`.
    pub lines: Vec<String>,
    reader: Lines<BufReader<ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// The demo's run folder (`EDGEGUARD_DEMO_DIR`: its logs, CA, device files).
    pub fn run_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Runs the script with the filters of `flavour` and `env` added to its environment;
    /// waits (at most 90 s) for its `ready` line.
    pub fn start(flavour: Flavour, env: &[(&str, String)]) -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let p: Vec<u16> = (0..10).map(|_| free_port()).collect();
        let ports = Ports {
            port: p[0],
            ext: p[1],
            admin: p[2],
            authz: p[3],
            authz_http: p[4],
            echo: p[5],
            gatekeeper: p[6],
            gatekeeper_shape: p[7],
            enroll: p[8],
            devices: p[9],
        };
        let mut cmd = Command::new(tools::root().join("envoy/demo/run.sh"));
        cmd.env("EDGEGUARD_BIN", tools::edgeguard())
            .env("EDGEGUARD_ENVOY", tools::envoy())
            .env("EDGEGUARD_DEMO_PORT", ports.port.to_string())
            .env("EDGEGUARD_DEMO_EXT_AUTHZ_PORT", ports.ext.to_string())
            .env("EDGEGUARD_DEMO_ADMIN_PORT", ports.admin.to_string())
            .env("EDGEGUARD_DEMO_AUTHZ_PORT", ports.authz.to_string())
            .env(
                "EDGEGUARD_DEMO_AUTHZ_HTTP_PORT",
                ports.authz_http.to_string(),
            )
            .env("EDGEGUARD_DEMO_ECHO_PORT", ports.echo.to_string())
            .env(
                "EDGEGUARD_DEMO_GATEKEEPER_PORT",
                ports.gatekeeper.to_string(),
            )
            .env(
                "EDGEGUARD_DEMO_GATEKEEPER_SHAPE_PORT",
                ports.gatekeeper_shape.to_string(),
            )
            .env("EDGEGUARD_DEMO_ENROLL_PORT", ports.enroll.to_string())
            .env("EDGEGUARD_DEMO_DEVICE_PORT", ports.devices.to_string())
            .env("EDGEGUARD_DEMO_DIR", dir.path())
            .env("EDGEGUARD_FLAVOUR", flavour.name())
            .env("EDGEGUARD_NATIVE_DIR", tools::native_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("envoy/demo/run.sh");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut demo = Demo {
            child,
            ports,
            lines: Vec::new(),
            reader: BufReader::new(stdout).lines(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        for line in demo.reader.by_ref() {
            let line = line.expect("run.sh output");
            if line == "ready" {
                break;
            }
            demo.lines.push(line);
            assert!(
                Instant::now() < deadline,
                "demo did not get ready:\n{}",
                demo.lines.join("\n")
            );
        }
        demo
    }

    /// Stops the script (TERM; it stops its children) and returns what it printed after `ready`.
    pub fn stop(&mut self) -> Vec<String> {
        signal(self.child.id(), 15);
        let rest: Vec<String> = self.reader.by_ref().map_while(Result::ok).collect();
        let _ = self.child.wait();
        rest
    }
}

impl Drop for Demo {
    /// A failed assertion must not leave the demo running.
    fn drop(&mut self) {
        signal(self.child.id(), 15);
    }
}

fn signal(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}
