//! Throughput and latency of `keyward serve` for small decrypts over the
//! socket (docs/DESIGN.md, "Performance targets": tens of thousands of requests
//! per second, p99 under a millisecond). A benchmark, not a test: it is
//! ignored by default, asserts nothing about time, and prints one JSON line
//! per configuration.
//!
//! ```text
//! cargo build -p keyward --release
//! KEYWARD_TEST_BIN=$PWD/target/release/keyward \
//!   cargo nextest run -p keyward-tests --test daemon_bench --run-ignored only --no-capture
//! ```
//!
//! Each client thread keeps one connection alive and sends the same
//! pre-encoded request over and over, reading each response before the
//! next (no pipelining). Clients and daemon share the machine's cores, so
//! the numbers include the clients' own cost.

use std::time::{Duration, Instant};

use keyward_api::http;
use keyward_tests::daemon::{Daemon, b64};
use serde_json::json;

/// How long each configuration runs.
const RUN: Duration = Duration::from_secs(3);

/// One request: `POST path` with a JSON `body`.
struct Request {
    path: String,
    body: Vec<u8>,
}

/// The request for `path` with `body`.
fn raw_request(path: &str, body: &str) -> Request {
    Request {
        path: path.to_owned(),
        body: body.as_bytes().to_vec(),
    }
}

/// Sends `request` until `RUN` is over; the latency of each exchange
/// (through keyward-api's client, as every client of the daemon).
fn hammer(socket: &std::path::Path, request: &Request) -> Vec<Duration> {
    let mut connection = http::Connection::connect(socket).expect("connect");
    connection
        .stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut latencies = Vec::with_capacity(200_000);
    let deadline = Instant::now() + RUN;
    while Instant::now() < deadline {
        let start = Instant::now();
        let response = connection
            .exchange("POST", &request.path, Some(&request.body), None)
            .expect("exchange");
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        latencies.push(start.elapsed());
    }
    latencies
}

/// Runs `connections` clients at once and prints the result.
fn measure(daemon: &Daemon, name: &str, connections: usize, request: &Request, per_request: usize) {
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..connections)
            .map(|_| scope.spawn(|| hammer(daemon.socket(), request)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client"))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |per_mille: usize| {
        let i = (latencies.len() * per_mille).div_ceil(1000).max(1) - 1;
        latencies[i].as_secs_f64() * 1e6
    };
    println!(
        "{{\"mode\":\"daemon\",\"request\":\"{name}\",\"connections\":{connections},\
         \"requests\":{},\"req_per_s\":{:.0},\"items_per_s\":{:.0},\"p50_us\":{:.1},\
         \"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        (latencies.len() * per_request) as f64 / elapsed,
        pct(500),
        pct(990),
        pct(999),
        pct(1000),
    );
}

#[test]
#[ignore = "benchmark: run with --run-ignored only --no-capture"]
fn small_decrypt_over_the_socket() {
    let daemon = Daemon::start();
    daemon.unlock();
    daemon.create_key("bench");
    let (status, sealed) = daemon.request(
        "POST",
        "/v1/encrypt",
        Some(&json!({"key": "bench", "plaintext": b64(&[0x5a; 64])})),
        None,
    );
    assert_eq!(status, 200, "{sealed}");
    let ciphertext = sealed["ciphertext"].as_str().expect("ciphertext");
    let single = raw_request(
        "/v1/decrypt",
        &json!({ "ciphertext": ciphertext }).to_string(),
    );
    for connections in [1, 2, 4, 16] {
        measure(&daemon, "decrypt-64B", connections, &single, 1);
    }
    let items: Vec<_> = (0..100)
        .map(|_| json!({ "ciphertext": ciphertext }))
        .collect();
    let batch = raw_request("/v1/decrypt/batch", &json!({ "items": items }).to_string());
    for connections in [1, 2] {
        measure(&daemon, "decrypt-batch-100x64B", connections, &batch, 100);
    }
    let encrypt = raw_request(
        "/v1/encrypt",
        &json!({"key": "bench", "plaintext": b64(&[0x5a; 64])}).to_string(),
    );
    measure(&daemon, "encrypt-64B", 2, &encrypt, 1);
}
