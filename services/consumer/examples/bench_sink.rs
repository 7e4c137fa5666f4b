//! The trivial HTTP sink of the consumer benchmark (bench/consumer.sh): answers every POST
//! with 200 and counts it, so event-consumer and the Python baseline meet the same server.
//!
//! bench_sink <listen address>     (prints the bound address on its first line)
//!
//! `GET /stats` answers `<count> <first ms> <last ms>`: POSTs received and when the first
//! and the latest arrived, in milliseconds since the Unix epoch (0 before any), so a script
//! can set them beside `date +%s%3N`. `DELETE /stats` starts the count again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

#[derive(Default)]
struct Tally {
    count: AtomicU64,
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as u64
}

// The body is read to the end (the extractor does that), as a real sink would.
async fn receive(State(tally): State<Arc<Tally>>, _body: Bytes) -> StatusCode {
    let now = now_ms();
    let _ = tally
        .first_ms
        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    tally.last_ms.fetch_max(now, Ordering::Relaxed);
    tally.count.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

async fn stats(State(tally): State<Arc<Tally>>) -> String {
    format!(
        "{} {} {}\n",
        tally.count.load(Ordering::Relaxed),
        tally.first_ms.load(Ordering::Relaxed),
        tally.last_ms.load(Ordering::Relaxed)
    )
}

async fn reset(State(tally): State<Arc<Tally>>) -> StatusCode {
    tally.count.store(0, Ordering::Relaxed);
    tally.first_ms.store(0, Ordering::Relaxed);
    tally.last_ms.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen] = args.as_slice() else {
        eprintln!("usage: bench_sink <listen address>");
        std::process::exit(2);
    };
    let app = Router::new()
        .route("/stats", get(stats).delete(reset))
        .fallback(receive)
        .with_state(Arc::new(Tally::default()));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|error| panic!("listening on {listen}: {error}"));
    println!("{}", listener.local_addr().expect("the bound address"));
    axum::serve(listener, app).await.expect("serving");
}
