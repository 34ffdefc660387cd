//! Saving and restoring a simulated card (configuration and PIV state) as
//! JSON, so a "device" survives restarts of `keyward-piv-sim`.
//!
//! The file holds the private keys, PIN, PUK and management key in the
//! clear: it is test state, written with mode 0600.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::card::{Card, CardConfig, KeySlot, PivState, Secret};
use super::keys::SlotKey;

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("bad card state: {what}"),
    )
}

fn secret_json(s: &Secret) -> Value {
    json!({"value": hex(&s.value), "max": s.max, "left": s.left, "default": s.default})
}

fn secret_from(v: &Value) -> Option<Secret> {
    Some(Secret {
        value: Zeroizing::new(unhex(v["value"].as_str()?)?),
        max: u8::try_from(v["max"].as_u64()?).ok()?,
        left: u8::try_from(v["left"].as_u64()?).ok()?,
        default: v["default"].as_bool()?,
    })
}

/// Serializes a card to JSON.
pub fn to_json(card: &Card) -> Value {
    let cfg = card.config();
    let s = card.piv_state();
    let slots: serde_json::Map<String, Value> = s
        .slots
        .iter()
        .map(|(slot, k)| {
            (
                format!("{slot:02x}"),
                json!({
                    "alg": k.key.alg(),
                    "scalar": hex(&k.key.scalar()),
                    "pin_policy": k.pin_policy,
                    "touch_policy": k.touch_policy,
                    "origin": k.origin,
                }),
            )
        })
        .collect();
    let objects: serde_json::Map<String, Value> = s
        .objects
        .iter()
        .map(|(t, v)| (hex(t), Value::String(hex(v))))
        .collect();
    json!({
        "serial": cfg.serial,
        "version": hex(&cfg.version),
        "attestation_seed": hex(&cfg.attestation_seed),
        "pin": secret_json(&s.pin),
        "puk": secret_json(&s.puk),
        "mgmt": {"alg": s.mgmt_alg, "key": hex(&s.mgmt_key), "touch": s.mgmt_touch, "default": s.mgmt_default},
        "slots": slots,
        "objects": objects,
    })
}

/// Restores a card from [`to_json`] output.
///
/// # Errors
/// Malformed or inconsistent JSON.
pub fn from_json(v: &Value) -> io::Result<Card> {
    let version: [u8; 3] = unhex(v["version"].as_str().ok_or_else(|| bad("version"))?)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("version"))?;
    let attestation_seed: [u8; 32] =
        unhex(v["attestation_seed"].as_str().ok_or_else(|| bad("seed"))?)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("attestation_seed"))?;
    let cfg = CardConfig {
        serial: v["serial"]
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| bad("serial"))?,
        version,
        attestation_seed,
    };
    let mut slots = BTreeMap::new();
    for (name, k) in v["slots"].as_object().ok_or_else(|| bad("slots"))? {
        let slot = u8::from_str_radix(name, 16).map_err(|_| bad("slot id"))?;
        let alg = k["alg"]
            .as_u64()
            .and_then(|a| u8::try_from(a).ok())
            .ok_or_else(|| bad("alg"))?;
        let scalar = Zeroizing::new(
            k["scalar"]
                .as_str()
                .and_then(unhex)
                .ok_or_else(|| bad("scalar"))?,
        );
        let key = SlotKey::from_scalar(alg, &scalar).ok_or_else(|| bad("key"))?;
        let byte = |f: &str| {
            k[f].as_u64()
                .and_then(|x| u8::try_from(x).ok())
                .ok_or_else(|| bad(f))
        };
        slots.insert(
            slot,
            KeySlot {
                key,
                pin_policy: byte("pin_policy")?,
                touch_policy: byte("touch_policy")?,
                origin: byte("origin")?,
            },
        );
    }
    let mut objects = BTreeMap::new();
    for (tag, value) in v["objects"].as_object().ok_or_else(|| bad("objects"))? {
        let tag = unhex(tag).ok_or_else(|| bad("object tag"))?;
        let value = value
            .as_str()
            .and_then(unhex)
            .ok_or_else(|| bad("object"))?;
        objects.insert(tag, value);
    }
    let m = &v["mgmt"];
    let state = PivState {
        pin: secret_from(&v["pin"]).ok_or_else(|| bad("pin"))?,
        puk: secret_from(&v["puk"]).ok_or_else(|| bad("puk"))?,
        mgmt_alg: m["alg"]
            .as_u64()
            .and_then(|x| u8::try_from(x).ok())
            .ok_or_else(|| bad("mgmt alg"))?,
        mgmt_key: Zeroizing::new(
            m["key"]
                .as_str()
                .and_then(unhex)
                .ok_or_else(|| bad("mgmt key"))?,
        ),
        mgmt_touch: m["touch"].as_bool().ok_or_else(|| bad("mgmt touch"))?,
        mgmt_default: m["default"].as_bool().ok_or_else(|| bad("mgmt default"))?,
        slots,
        objects,
    };
    let mut card = Card::new(cfg);
    card.set_piv_state(state);
    Ok(card)
}

/// Writes the card to `path` (mode 0600, atomically via a temporary file).
///
/// # Errors
/// I/O failure.
pub fn save(card: &Card, path: &Path) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(to_json(card).to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads a card written by [`save`].
///
/// # Errors
/// I/O failure or malformed state.
pub fn load(path: &Path) -> io::Result<Card> {
    let text = std::fs::read_to_string(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    from_json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_a_file() {
        let mut card = Card::new(CardConfig {
            serial: 777,
            version: [5, 7, 1],
            attestation_seed: [3; 32],
        });
        let mut s = card.piv_state().clone();
        s.slots.insert(
            0x9A,
            KeySlot {
                key: SlotKey::generate(0x14).expect("p384"),
                pin_policy: 3,
                touch_policy: 2,
                origin: 1,
            },
        );
        s.objects.insert(vec![0x5F, 0xC1, 0x02], vec![1, 2, 3]);
        s.pin.left = 1;
        card.set_piv_state(s);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("card.json");
        save(&card, &path).expect("save");
        let back = load(&path).expect("load");
        assert_eq!(to_json(&back), to_json(&card));
        assert_eq!(back.config().serial, 777);
        let k = &back.piv_state().slots[&0x9A];
        assert_eq!(
            k.key.public_point(),
            card.piv_state().slots[&0x9A].key.public_point()
        );
        assert!(load(&dir.path().join("missing")).is_err());
        std::fs::write(&path, b"{\"serial\": 1}").expect("write");
        assert!(load(&path).is_err());
    }
}
