//! `event-printer`: the demo's sink. An EventConsumer delivers each CloudEvent to it as one
//! HTTP request (binary mode: `ce-*` headers, the event's data as the body); it prints the
//! event as one JSON line on stdout (`kubectl logs` shows them) and answers 204.
//!
//!     event-printer --listen 0.0.0.0:8080

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "0.0.0.0:8080".into());
    let app = Router::new().fallback(print_event);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("event-printer listening on http://{listen}/");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// One line per event: its attributes (the `ce-` headers without the prefix), the
/// `traceparent` it carried and its data (JSON when it parses, text otherwise).
async fn print_event(headers: HeaderMap, body: Bytes) -> StatusCode {
    let attributes: Map<String, Value> = headers
        .iter()
        .filter_map(|(name, value)| {
            let attribute = name.as_str().strip_prefix("ce-")?;
            Some((attribute.to_owned(), value.to_str().ok()?.into()))
        })
        .collect();
    let data = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    println!(
        "{}",
        json!({"attributes": attributes, "traceparent": traceparent, "data": data})
    );
    StatusCode::NO_CONTENT
}
