//! `make bench` section `xds`: how long from saving the `edgeguard xds` file until the ADS
//! clients have ACKed the new version, for one real Envoy, one simulated client, and 100
//! simulated clients (tonic ADS clients on their own connections that ACK what they get).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::bench::median;
use crate::process::free_port;
use crate::tools;
use crate::xds::{write_atomic, XdsEnvoy, XdsServer};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

fn rounds() -> usize {
    std::env::var("EDGEGUARD_BENCH_XDS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// The served file; `round` changes one route (so each edit moves RDS only).
fn config(listen: u16, round: usize) -> String {
    let wasm_dir = tools::wasm("jwt_shape")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    format!(
        r#"wasm_dir: {}
upstreams:
  - {{ name: electric, endpoints: ["127.0.0.1:1"] }}
filters:
  - name: jwt-shape
    type: jwt-shape
    config_file: {}
listeners:
  - {{ name: main, address: "127.0.0.1:{listen}", filters: [jwt-shape] }}
routes:
  - {{ match: {{ path: /v1/shape }}, upstream: electric }}
  - {{ match: {{ prefix: /round }}, direct_response: {{ status: 200, body: "round {round}" }} }}
"#,
        wasm_dir.display(),
        tools::root().join("envoy/demo/jwt-shape.json").display(),
    )
}

/// An ACK a simulated client sent.
struct Ack {
    client: usize,
    type_url: String,
    at: Instant,
}

fn names(type_url: &str) -> Vec<String> {
    match type_url {
        EDS => vec!["electric".into()],
        RDS => vec!["main-routes".into()],
        ECDS => vec!["jwt-shape".into()],
        _ => Vec::new(),
    }
}

/// One simulated Envoy: subscribes to every type, ACKs every response.
async fn client(id: usize, port: u16, acks: mpsc::UnboundedSender<Ack>) -> Result<(), String> {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(16);
    for (i, t) in [CDS, EDS, LDS, RDS, ECDS].into_iter().enumerate() {
        let node = (i == 0).then(|| Node {
            id: format!("sim-{id}"),
            cluster: "bench".into(),
            ..Default::default()
        });
        let req = DiscoveryRequest {
            node,
            type_url: t.into(),
            resource_names: names(t),
            ..Default::default()
        };
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    let mut inbound = c
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(resp) = inbound.message().await.map_err(|e| e.to_string())? {
        let ack = DiscoveryRequest {
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names(&resp.type_url),
            type_url: resp.type_url.clone(),
            ..Default::default()
        };
        tx.send(ack).await.map_err(|e| e.to_string())?;
        let _ = acks.send(Ack {
            client: id,
            type_url: resp.type_url,
            at: Instant::now(),
        });
    }
    Ok(())
}

/// Per round: (median client, last client) time from the write to the RDS ACK, in ms.
fn simulated(
    xds: &XdsServer,
    file: &Path,
    listen: u16,
    n: usize,
    round0: usize,
) -> Vec<(f64, f64)> {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let port = xds.port;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let tx = tx.clone();
            rt.spawn(async move {
                if let Err(e) = client(i, port, tx).await {
                    eprintln!("xds bench: client {i}: {e}");
                }
            })
        })
        .collect();
    // every client has its initial configuration
    let mut ready = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} clients got RDS",
            ready.len()
        );
        match rx.try_recv() {
            Ok(a) if a.type_url == RDS => {
                ready.insert(a.client);
            }
            Ok(_) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let mut out = Vec::new();
    for r in 0..rounds() {
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        write_atomic(file, &config(listen, round0 + r));
        let mut got: BTreeMap<usize, Duration> = BTreeMap::new();
        let deadline = t0 + Duration::from_secs(10);
        while got.len() < n && Instant::now() < deadline {
            match rx.try_recv() {
                Ok(a) if a.type_url == RDS && a.at > t0 => {
                    got.entry(a.client).or_insert(a.at - t0);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(
            got.len(),
            n,
            "round {r}: only {} of {n} clients ACKed within 10 s",
            got.len()
        );
        let mut ms: Vec<f64> = got.values().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let last = ms.last().copied().unwrap_or(f64::NAN);
        out.push((median(ms), last));
        // let the watcher settle so rounds do not merge
        std::thread::sleep(Duration::from_millis(150));
    }
    for t in tasks {
        t.abort();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    out
}

/// Per round: ms from the write until a real Envoy ACKed the new RDS version (seen on
/// `/status`).
fn real_envoy(xds: &XdsServer, file: &Path, listen: u16, round0: usize) -> Vec<f64> {
    let envoy = XdsEnvoy::start("bench-envoy", "bench", xds.port);
    let accepted = || -> (String, String) {
        let st = xds.status();
        let stream = st["streams"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["node"] == "bench-envoy").cloned())
            .unwrap_or_default();
        (
            stream["types"]["rds"]["accepted"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            st["snapshots"]["default"]["rds"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let mut out = Vec::new();
    for r in 0..rounds() {
        let before = accepted().1;
        let t0 = Instant::now();
        write_atomic(file, &config(listen, round0 + r));
        let deadline = t0 + Duration::from_secs(10);
        let took = loop {
            let (acc, snap) = accepted();
            if snap != before && acc == snap {
                break t0.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "Envoy did not ACK within 10 s:\n{}",
                envoy.log()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        out.push(took.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(150));
    }
    out
}

/// Runs the section and appends its table to `report`.
pub fn section(report: &mut String) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let file = dir.path().join("xds.yaml");
    let listen = free_port();
    write_atomic(&file, &config(listen, 0));
    let xds = XdsServer::start(&file);
    let n = rounds();

    eprintln!("xds: 1 real Envoy, {n} edits ...");
    let envoy_ms = real_envoy(&xds, &file, listen, 1000);
    eprintln!("xds: 1 simulated client, {n} edits ...");
    let one = simulated(&xds, &file, listen, 1, 2000);
    eprintln!("xds: 100 simulated clients, {n} edits ...");
    let hundred = simulated(&xds, &file, listen, 100, 3000);
    let nacks = xds.metric("edgeguard_xds_nacks_total");

    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let _ = writeln!(report, "### edgeguard xds: file change to ACK\n");
    let _ = writeln!(
        report,
        "{n} edits per row (one route changed: RDS only), time from the atomic write of the file to the ACK of the new version; notify watcher + 50 ms debounce included. NACKs during the run: {nacks}.\n"
    );
    let _ = writeln!(
        report,
        "| ADS clients | median client ms (median of rounds) | last client ms (median of rounds) | last client ms (worst round) |"
    );
    let _ = writeln!(report, "|---|---:|---:|---:|");
    let _ = writeln!(
        report,
        "| 1 real Envoy 1.40 | {:.1} | {:.1} | {:.1} |",
        median(envoy_ms.clone()),
        median(envoy_ms.clone()),
        max(&envoy_ms)
    );
    for (label, rows) in [("1 simulated", &one), ("100 simulated", &hundred)] {
        let lasts: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let _ = writeln!(
            report,
            "| {label} | {:.1} | {:.1} | {:.1} |",
            median(rows.iter().map(|r| r.0).collect()),
            median(lasts.clone()),
            max(&lasts)
        );
    }
    let worst100 = hundred.iter().map(|r| r.1).fold(f64::NAN, f64::max);
    let _ = writeln!(
        report,
        "\ntarget: 100 clients < 1000 ms: worst round {:.0} ms, {}\n",
        worst100,
        if worst100 < 1000.0 { "met" } else { "NOT met" }
    );
}
