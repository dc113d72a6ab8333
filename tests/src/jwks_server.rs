//! A JWKS endpoint the test controls: serve a key set, garbage, or an error status, and count
//! fetches. Runs on its own thread with a small tokio runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;

#[derive(Debug)]
struct State {
    status: u16,
    body: String,
    hits: usize,
}

/// The server; stops when dropped.
pub struct JwksServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl JwksServer {
    /// Starts on a free port (or on `port` when given) serving `jwks`.
    pub fn start_on(port: u16, jwks: &Value) -> JwksServer {
        let state = Arc::new(Mutex::new(State {
            status: 200,
            body: jwks.to_string(),
            hits: 0,
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
                        .await
                        .expect("bind jwks server");
                let _ = port_tx.send(listener.local_addr().map(|a| a.port()).unwrap_or(0));
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = st.clone();
                        tokio::spawn(async move {
                            let svc = service_fn(move |_req: Request<Incoming>| {
                                let st = st.clone();
                                async move {
                                    let (status, body) = {
                                        let mut s = st.lock().expect("lock");
                                        s.hits += 1;
                                        (s.status, s.body.clone())
                                    };
                                    let mut r = Response::new(Full::new(Bytes::from(body)));
                                    *r.status_mut() = hyper::StatusCode::from_u16(status)
                                        .unwrap_or(hyper::StatusCode::OK);
                                    Ok::<_, Infallible>(r)
                                }
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = rx => {}
                }
            });
        });
        let port = port_rx.recv().expect("jwks server port");
        JwksServer {
            port,
            state,
            _stop: tx,
        }
    }

    pub fn start(jwks: &Value) -> JwksServer {
        JwksServer::start_on(0, jwks)
    }

    pub fn serve(&self, jwks: &Value) {
        let mut s = self.state.lock().expect("lock");
        s.status = 200;
        s.body = jwks.to_string();
    }

    pub fn serve_raw(&self, status: u16, body: &str) {
        let mut s = self.state.lock().expect("lock");
        s.status = status;
        s.body = body.to_string();
    }

    pub fn hits(&self) -> usize {
        self.state.lock().expect("lock").hits
    }
}
