//! The broker's HTTP listener (`gregor serve --http HOST:PORT`, TOML `[http] listener`):
//!
//! - `/metrics`: Prometheus text format ([`metrics`]);
//! - `/healthz` (the process serves) and `/readyz` (the group coordinator is loaded and, in a
//!   cluster, the broker is registered and a quorum leader is known);
//! - `/`: the web console (HTML/JS/CSS embedded in the binary, no CDN), which polls
//! - `/api/overview`, `/api/topics`, `/api/topics/{name}`, `/api/groups`, `/api/groups/{id}`
//!   (JSON, read-only; the shapes are the `Serialize` types of [`state`]).
//!
//! Data flows one way: this crate reads the broker through [`gregor_broker::Broker`]; the
//! broker never calls into it.
//!
//! Hostile clients are bounded like on the Kafka port ([`HttpConfig`]): at most
//! `max_connections` open (more are closed at accept), a request header must arrive within
//! `header_timeout_ms` (slow and idle connections are closed), headers larger than
//! `max_header_bytes` get 431 and a close, and no connection lives longer than
//! `max_connection_age_ms`. Requests have no body that is read: the API is GET only.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gregor_broker::config::HttpConfig;
use gregor_broker::Broker;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub mod metrics;
pub mod state;

struct AppState {
    broker: Arc<Broker>,
    registry: Registry,
    lag: state::LagHistory,
}

type Shared = Arc<AppState>;

/// The routes (without the connection limits, which [`serve`] applies).
fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/overview", get(api_overview))
        .route("/api/topics", get(api_topics))
        .route("/api/topics/{name}", get(api_topic))
        .route("/api/groups", get(api_groups))
        .route("/api/groups/{id}", get(api_group))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("assets/index.html"),
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
}

/// Runs a snapshot read off the async workers (it takes locks and walks every partition).
async fn blocking<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(&AppState) -> T + Send + 'static,
) -> Result<T, StatusCode> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

async fn scrape(State(s): State<Shared>) -> Response {
    let text = blocking(&s, |s| {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &s.registry).map(|_| out)
    })
    .await;
    match text {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(s): State<Shared>) -> Response {
    let b = &s.broker;
    let groups = b.groups().is_some_and(|g| g.is_loaded());
    let cluster = b
        .cluster()
        .is_none_or(|c| c.is_registered() && c.node().leader_id().is_some());
    if groups && cluster && !b.is_stopping() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn api_overview(State(s): State<Shared>) -> Response {
    match blocking(&s, |s| {
        let topics = state::topics(&s.broker);
        let groups = state::groups(&s.broker);
        state::overview(&s.broker, &topics, groups.len())
    })
    .await
    {
        Ok(o) => Json(o).into_response(),
        Err(code) => code.into_response(),
    }
}

async fn api_topics(State(s): State<Shared>) -> Response {
    match blocking(&s, |s| state::topics(&s.broker)).await {
        Ok(topics) => Json(
            topics
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "internal": t.internal,
                        "partitions": t.partitions.len(),
                        "size_bytes": t.size_bytes(),
                        "log_end_offset_sum": t.partitions.iter().map(|p| p.log_end_offset).sum::<i64>(),
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(code) => code.into_response(),
    }
}

async fn api_topic(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    match blocking(&s, move |s| state::topic(&s.broker, &name)).await {
        Ok(Some(t)) => Json(t).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown topic"})),
        )
            .into_response(),
        Err(code) => code.into_response(),
    }
}

async fn api_groups(State(s): State<Shared>) -> Response {
    match blocking(&s, |s| state::groups(&s.broker)).await {
        Ok(groups) => Json(
            groups
                .iter()
                .map(|g| {
                    json!({
                        "group_id": g.group_id,
                        "state": g.state,
                        "members": g.members.len(),
                        "lag": g.total_lag(),
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(code) => code.into_response(),
    }
}

async fn api_group(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    match blocking(&s, move |s| {
        state::groups(&s.broker)
            .into_iter()
            .find(|g| g.group_id == id)
            .map(|g| {
                let history = s.lag.of(&g.group_id);
                let mut v = serde_json::to_value(&g).unwrap_or_default();
                v["lag"] = json!(g.total_lag());
                v["lag_history"] = json!(history);
                v
            })
    })
    .await
    {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown group"})),
        )
            .into_response(),
        Err(code) => code.into_response(),
    }
}

/// Serves HTTP on `listener` until `stop` turns true; then closes every connection.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    config: HttpConfig,
    mut stop: watch::Receiver<bool>,
) {
    let state = Arc::new(AppState {
        registry: metrics::registry(broker.clone()),
        broker,
        lag: state::LagHistory::default(),
    });
    let sampler = {
        let s = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(state::LAG_SAMPLE_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let groups = state::groups(&s2.broker);
                    s2.lag.sample(s2.broker.now_ms(), &groups);
                })
                .await;
            }
        })
    };
    let app = router(state);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let header_timeout = Duration::from_millis(config.header_timeout_ms.max(1));
    let max_age = Duration::from_millis(config.max_connection_age_ms.max(1));
    // hyper's smallest buffer is 8 KiB.
    let max_buf = config.max_header_bytes.max(8192);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, "refusing HTTP connection: http max_connections reached");
                        continue;
                    };
                    let service = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(header_timeout)
                            .max_buf_size(max_buf)
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(e) = r {
                                    tracing::debug!(%peer, error = %e, "HTTP connection closed");
                                }
                            }
                            _ = tokio::time::sleep(max_age) => {
                                conn.as_mut().graceful_shutdown();
                                let _ = tokio::time::timeout(header_timeout, conn).await;
                            }
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    sampler.abort();
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
