//! Throughput and latency of `keyward serve` for small decrypts over the
//! socket (DESIGN.md, "Performance targets": tens of thousands of requests
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

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use keyward_tests::daemon::{Daemon, b64};
use serde_json::json;

/// How long each configuration runs.
const RUN: Duration = Duration::from_secs(3);

/// One request, raw, for `path` with `body`.
fn raw_request(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: k\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request` until `RUN` is over; the latency of each exchange.
fn hammer(socket: &std::path::Path, request: &[u8]) -> Vec<Duration> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut latencies = Vec::with_capacity(200_000);
    let mut buffer = vec![0u8; 1 << 20];
    let deadline = Instant::now() + RUN;
    while Instant::now() < deadline {
        let start = Instant::now();
        stream.write_all(request).expect("send");
        // Read the head, then exactly Content-Length bytes of body.
        let mut filled = 0;
        let (head_end, length) = loop {
            let n = stream.read(&mut buffer[filled..]).expect("read");
            assert!(n > 0, "connection closed");
            filled += n;
            if let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buffer[..end]).expect("head");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().expect("length"))
                    })
                    .expect("content-length");
                break (end + 4, length);
            }
        };
        while filled < head_end + length {
            let n = stream.read(&mut buffer[filled..]).expect("read");
            assert!(n > 0, "connection closed");
            filled += n;
        }
        latencies.push(start.elapsed());
    }
    latencies
}

/// Runs `connections` clients at once and prints the result.
fn measure(daemon: &Daemon, name: &str, connections: usize, request: &[u8], per_request: usize) {
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
