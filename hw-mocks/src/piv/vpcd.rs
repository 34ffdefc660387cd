//! The card side of vsmartcard's vpcd protocol.
//!
//! The card connects to vpcd (inside pcscd) on TCP `35963` (reader
//! `Virtual PCD 00 00`) or `35964` (`Virtual PCD 00 01`). Every message in
//! both directions is a 2-byte big-endian length plus payload. 1-byte
//! messages from vpcd are control codes (0 power off, 1 power on, 2 reset,
//! 4 "send ATR"); longer ones are command APDUs, answered with response
//! data + SW1 SW2.
//!
//! vpcd writes the length and the payload in two sends; with delayed ACKs
//! every APDU would stall ~48 ms. We set `TCP_QUICKACK` before **every**
//! read (Linux clears it again by itself) and write each reply in one write.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::apdu::Sw;
use super::card::{ATR, Card, CardConfig};

/// The first vpcd port (reader `Virtual PCD 00 00`).
pub const VPCD_PORT: u16 = 35963;

/// How long to stay away after a disconnect before reconnecting (pcscd
/// polls every ~400 ms and must notice the removal).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Scripted faults, applied by the transport.
#[derive(Debug, Default)]
struct Faults {
    fail_next: Option<Sw>,
    delay: Duration,
    pull_on_next_apdu: bool,
}

struct Shared {
    card: Mutex<Card>,
    faults: Mutex<Faults>,
    stop: AtomicBool,
    pulled: AtomicBool,
    connected: AtomicBool,
    quickack: AtomicBool,
    apdus: AtomicU64,
    stream: Mutex<Option<TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make the card unusable for other tests.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A simulated YubiKey plugged into vpcd, served by a background thread
/// that reconnects whenever the connection drops (pcscd restart, pull).
/// Dropping it disconnects the card and joins the thread.
pub struct VirtualCard {
    shared: Arc<Shared>,
    port: u16,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for VirtualCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualCard")
            .field("port", &self.port)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl VirtualCard {
    /// Inserts a factory-fresh card with `cfg` into the vpcd reader on
    /// `port` (35963 or 35964).
    pub fn start(port: u16, cfg: CardConfig) -> Self {
        Self::with_card(port, Card::new(cfg))
    }

    /// Inserts an existing card (e.g. restored from a state file).
    pub fn with_card(port: u16, card: Card) -> Self {
        let shared = Arc::new(Shared {
            card: Mutex::new(card),
            faults: Mutex::new(Faults::default()),
            stop: AtomicBool::new(false),
            pulled: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            quickack: AtomicBool::new(true),
            apdus: AtomicU64::new(0),
            stream: Mutex::new(None),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("piv-sim-{port}"))
            .spawn(move || run(&thread_shared, port))
            .expect("spawning the card thread");
        Self {
            shared,
            port,
            thread: Some(thread),
        }
    }

    /// The vpcd port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PC/SC reader name this card appears in.
    pub fn reader_name(&self) -> String {
        format!("Virtual PCD 00 {:02}", self.port.saturating_sub(VPCD_PORT))
    }

    /// Runs `f` on the card (state inspection, factory reset, touch mode).
    pub fn card<R>(&self, f: impl FnOnce(&mut Card) -> R) -> R {
        f(&mut lock(&self.shared.card))
    }

    /// Whether the card is connected to vpcd right now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Number of command APDUs answered so far.
    pub fn apdu_count(&self) -> u64 {
        self.shared.apdus.load(Ordering::SeqCst)
    }

    /// Fails the next command APDU with `sw` (the card does not see it).
    pub fn fail_next(&self, sw: Sw) {
        lock(&self.shared.faults).fail_next = Some(sw);
    }

    /// Delays every reply by `delay` (zero to stop).
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Pulls the card when the next command APDU arrives, without answering
    /// it (removal in the middle of an operation). It stays out until
    /// [`VirtualCard::insert`].
    pub fn pull_on_next_apdu(&self) {
        lock(&self.shared.faults).pull_on_next_apdu = true;
    }

    /// Pulls the card now: the connection is closed and the card stays out
    /// until [`VirtualCard::insert`]. Volatile state (PIN verified,
    /// management key authenticated) is lost, as on a real removal.
    pub fn pull(&self) {
        self.shared.pulled.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.shared.stream).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Re-inserts a pulled card (it reconnects within about a second;
    /// pcscd needs up to another ~0.5 s to notice).
    pub fn insert(&self) {
        self.shared.pulled.store(false, Ordering::SeqCst);
    }

    /// Turns the per-read `TCP_QUICKACK` off or on (default on). Only for
    /// measuring the delayed-ACK stall it avoids (docs/BENCHMARKS.md).
    pub fn set_quickack(&self, enabled: bool) {
        self.shared.quickack.store(enabled, Ordering::SeqCst);
    }

    /// Waits until the card is connected to vpcd or `timeout` passes.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.is_connected() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.is_connected()
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(s) = lock(&self.shared.stream).as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps up to `d`, returning early when the card is stopped.
fn pause(shared: &Shared, d: Duration) {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() && !shared.stop.load(Ordering::SeqCst) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

fn run(shared: &Shared, port: u16) {
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.pulled.load(Ordering::SeqCst) {
            pause(shared, Duration::from_millis(20));
            continue;
        }
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            pause(shared, Duration::from_millis(100));
            continue;
        };
        if let Ok(clone) = stream.try_clone() {
            *lock(&shared.stream) = Some(clone);
        }
        shared.connected.store(true, Ordering::SeqCst);
        let _ = serve(shared, stream);
        shared.connected.store(false, Ordering::SeqCst);
        *lock(&shared.stream) = None;
        lock(&shared.card).reset_session();
        pause(shared, RECONNECT_PAUSE);
    }
}

fn read_frame(stream: &mut TcpStream, quickack: bool) -> io::Result<Vec<u8>> {
    if quickack {
        rustix::net::sockopt::set_tcp_quickack(&*stream, true)?;
    }
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    if quickack {
        rustix::net::sockopt::set_tcp_quickack(&*stream, true)?;
    }
    stream.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| io::Error::other("reply too long"))?;
    let mut frame = Vec::with_capacity(payload.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)
}

fn serve(shared: &Shared, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.pulled.load(Ordering::SeqCst) {
            return Ok(());
        }
        let msg = read_frame(&mut stream, shared.quickack.load(Ordering::SeqCst))?;
        match msg.as_slice() {
            // Power off, power on, reset: volatile state is lost.
            [0..=2] => lock(&shared.card).reset_session(),
            [4] => write_frame(&mut stream, ATR)?,
            [_] | [] => {}
            apdu => {
                let (fail, delay, pull) = {
                    let mut f = lock(&shared.faults);
                    (
                        f.fail_next.take(),
                        f.delay,
                        std::mem::take(&mut f.pull_on_next_apdu),
                    )
                };
                if pull {
                    shared.pulled.store(true, Ordering::SeqCst);
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                let reply = match fail {
                    Some(sw) => sw.to_be_bytes().to_vec(),
                    None => lock(&shared.card).process(apdu),
                };
                shared.apdus.fetch_add(1, Ordering::SeqCst);
                write_frame(&mut stream, &reply)?;
            }
        }
    }
}
