//! `edgeguard echo`: a tiny upstream that answers every request with a JSON description of
//! what it received (method, path, headers). The demo and the tests put it behind Envoy to
//! show which headers the filters stamped, stripped or rewrote.
//!
//! A request header `x-echo-vary: <value>` makes the response carry `vary: <value>`, and
//! `x-echo-status: <code>` sets the status, so tests can see how filters treat upstream
//! responses.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, env = "EDGEGUARD_ECHO_LISTEN", default_value = "127.0.0.1:10080")]
    listen: SocketAddr,
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let vary = req.headers().get("x-echo-vary").cloned();
    let status = req
        .headers()
        .get("x-echo-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(200);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc = json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut resp = Response::new(Full::new(Bytes::from(doc.to_string())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Some(v) = vary {
        resp.headers_mut().insert(hyper::header::VARY, v);
    }
    Ok(resp)
}

/// Serves until the process is stopped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}

pub async fn run(args: EchoArgs) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    eprintln!("edgeguard echo: listening on {}", args.listen);
    serve(listener).await.map_err(|e| e.to_string())
}
