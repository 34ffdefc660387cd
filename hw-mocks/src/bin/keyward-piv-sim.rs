//! `keyward-piv-sim`: a software YubiKey 5 (PIV) for pcscd's vpcd driver.
//!
//! ```text
//! keyward-piv-sim [--port 35963] [--serial 12345678] [--firmware 5.4.3]
//!                 [--state FILE] [--attestation-seed HEX64]
//! ```
//!
//! Connects to vpcd (inside a running pcscd) on 127.0.0.1:PORT and serves
//! the card until killed; reconnects if pcscd restarts. With `--state`, the
//! card is loaded from FILE if it exists and saved there after every
//! command that changed it. See docs/PIV-SIM.md.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use keyward_hw_mocks::piv::{Card, CardConfig, VPCD_PORT, VirtualCard, persist};

struct Args {
    port: u16,
    cfg: CardConfig,
    state: Option<PathBuf>,
}

const USAGE: &str = "usage: keyward-piv-sim [--port 35963] [--serial N] [--firmware X.Y.Z] [--state FILE] [--attestation-seed HEX64]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: VPCD_PORT,
        cfg: CardConfig::default(),
        state: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_owned());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--port" => args.port = value.parse().map_err(|_| "bad --port".to_owned())?,
            "--serial" => args.cfg.serial = value.parse().map_err(|_| "bad --serial".to_owned())?,
            "--firmware" => {
                let parts: Vec<u8> = value
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|_| "bad --firmware (X.Y.Z)".to_owned())?;
                args.cfg.version = parts
                    .try_into()
                    .map_err(|_| "bad --firmware (X.Y.Z)".to_owned())?;
                if !(4..=5).contains(&args.cfg.version[0]) {
                    return Err("--firmware major must be 4 or 5".to_owned());
                }
            }
            "--state" => args.state = Some(PathBuf::from(value)),
            "--attestation-seed" => {
                let bytes: Vec<u8> = (0..value.len())
                    .step_by(2)
                    .map(|i| {
                        value
                            .get(i..i + 2)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| "bad --attestation-seed".to_owned())?;
                args.cfg.attestation_seed = bytes
                    .try_into()
                    .map_err(|_| "--attestation-seed must be 32 bytes of hex".to_owned())?;
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let card = match &args.state {
        Some(path) if path.exists() => match persist::load(path) {
            Ok(card) => card,
            Err(e) => {
                eprintln!("keyward-piv-sim: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        _ => Card::new(args.cfg.clone()),
    };
    let (serial, version) = (card.config().serial, card.config().version);
    let sim = VirtualCard::with_card(args.port, card);
    eprintln!(
        "keyward-piv-sim: serial {serial}, firmware {}.{}.{}, connecting to vpcd on 127.0.0.1:{} (reader {:?})",
        version[0],
        version[1],
        version[2],
        args.port,
        sim.reader_name()
    );
    let mut last = None;
    let mut connected = false;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if sim.is_connected() != connected {
            connected = sim.is_connected();
            eprintln!(
                "keyward-piv-sim: {}",
                if connected {
                    "connected to vpcd"
                } else {
                    "disconnected, retrying"
                }
            );
        }
        if let Some(path) = &args.state {
            let snapshot = sim.card(|c| persist::to_json(c));
            if last.as_ref() != Some(&snapshot) {
                if let Err(e) = sim.card(|c| persist::save(c, path)) {
                    eprintln!("keyward-piv-sim: saving {}: {e}", path.display());
                }
                last = Some(snapshot);
            }
        }
    }
}
