//! Wycheproof and RFC vectors, run through keyward's own wrappers (not the
//! underlying crates), so that our length guards and key checks are what is
//! tested (docs/RELIABILITY.md §0.1, §1, §5.1).
//!
//! Vectors live in `tests/vectors/` (see its MANIFEST.json for sources and
//! hashes). Each test prints one summary line and asserts the exact number
//! of vectors it ran, so a missing or emptied file fails instead of passing
//! with zero vectors.

use std::fmt::Write as _;
use std::path::PathBuf;

use keyward_kms::Error;
use keyward_kms::Secret32;
use keyward_kms::crypto::aead::{self, Nonce};
use keyward_kms::crypto::{ecdsa, ecies, kw, signing};
use p256::SecretKey;
use serde_json::Value;

fn vectors(rel: &str) -> Value {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "vectors", rel]
        .iter()
        .collect();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn wycheproof(file: &str) -> Value {
    vectors(&format!("wycheproof/{file}"))
}

fn groups(v: &Value) -> &[Value] {
    v["testGroups"].as_array().expect("testGroups")
}

fn tests(g: &Value) -> &[Value] {
    g["tests"].as_array().expect("tests")
}

fn hx(t: &Value, field: &str) -> Vec<u8> {
    hex::decode(t[field].as_str().unwrap_or_else(|| panic!("field {field}")))
        .unwrap_or_else(|e| panic!("field {field}: {e}"))
}

fn tc(t: &Value) -> u64 {
    t["tcId"].as_u64().expect("tcId")
}

fn result(t: &Value) -> &str {
    t["result"].as_str().expect("result")
}

/// Counts per outcome, plus the failures found.
#[derive(Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_rejected: usize,
    /// Valid for the raw algorithm, but a shape keyward never produces
    /// (AES-KW of keys other than 32 bytes): refused on purpose.
    valid_refused_by_design: usize,
    failures: String,
}

impl Tally {
    fn total(&self) -> usize {
        self.valid
            + self.invalid
            + self.acceptable_accepted
            + self.acceptable_rejected
            + self.valid_refused_by_design
    }

    fn fail(&mut self, t: &Value, what: impl std::fmt::Display) {
        writeln!(
            self.failures,
            "  tc {} ({}, {:?}): {what}",
            tc(t),
            result(t),
            t["comment"].as_str().unwrap_or("")
        )
        .expect("write to String");
    }

    /// Records one vector. `outcome` is `Some(output matched?)` when our
    /// wrapper accepted the input, `None` when it rejected it.
    fn record(&mut self, t: &Value, outcome: Option<bool>) {
        match (result(t), outcome) {
            ("valid", Some(true)) => self.valid += 1,
            ("invalid", None) => self.invalid += 1,
            ("acceptable", Some(true)) => self.acceptable_accepted += 1,
            ("acceptable", None) => self.acceptable_rejected += 1,
            (_, Some(false)) => self.fail(t, "accepted with a WRONG output"),
            ("valid", None) => self.fail(t, "valid vector rejected"),
            ("invalid", Some(true)) => self.fail(t, "invalid vector accepted"),
            (other, _) => self.fail(t, format!("unknown result {other:?}")),
        }
    }

    /// Prints the summary line, then checks no vector failed and the counts
    /// are exactly `expected` = (valid, invalid, acceptable).
    fn finish(&self, file: &str, expected: (usize, usize, usize), extra: &str) {
        let acceptable = self.acceptable_accepted + self.acceptable_rejected;
        let passed = self.total();
        let fails = self.failures.lines().count();
        let mut line = format!(
            "wycheproof {file}: {} vectors, {passed} passed ({} valid accepted, {} invalid rejected",
            passed + fails,
            self.valid,
            self.invalid
        );
        if self.valid_refused_by_design > 0 {
            write!(
                line,
                ", {} valid but of a size keyward never wraps, refused",
                self.valid_refused_by_design
            )
            .expect("write to String");
        }
        if acceptable > 0 {
            write!(
                line,
                ", {acceptable} acceptable: {} accepted with the exact output, {} rejected",
                self.acceptable_accepted, self.acceptable_rejected
            )
            .expect("write to String");
        }
        line.push(')');
        line.push_str(extra);
        println!("{line}");
        assert!(
            self.failures.is_empty(),
            "{file} failures:\n{}",
            self.failures
        );
        assert_eq!(
            (self.valid, self.invalid, acceptable),
            expected,
            "{file}: unexpected number of vectors"
        );
    }
}

#[test]
fn aes_gcm() {
    let v = wycheproof("aes_gcm_test.json");
    let mut tally = Tally::default();
    let mut other_iv = 0;
    for g in groups(&v) {
        if g["keySize"] != 256 || g["tagSize"] != 128 {
            continue;
        }
        if g["ivSize"] != 96 {
            // Our nonce type is exactly 12 bytes: these cannot be expressed.
            for t in tests(g) {
                assert!(<[u8; 12]>::try_from(&hx(t, "iv")[..]).is_err());
                other_iv += 1;
            }
            continue;
        }
        for t in tests(g) {
            let key = aead::Key::new(&Secret32::try_from_slice(&hx(t, "key")).expect("32"));
            let nonce = Nonce::from_bytes(hx(t, "iv").try_into().expect("12-byte IV"));
            let (aad, msg, ct, tag) = (hx(t, "aad"), hx(t, "msg"), hx(t, "ct"), hx(t, "tag"));
            let mut sealed = ct.clone();
            sealed.extend_from_slice(&tag);
            let opened = key
                .open_in_place(nonce, &aad, &mut sealed)
                .ok()
                .map(|pt| *pt == msg[..]);
            if result(t) == "valid" {
                let mut buf = msg.clone();
                let our_tag = key.seal_in_place(nonce, &aad, &mut buf).expect("seal");
                if buf != ct || our_tag[..] != tag[..] {
                    tally.fail(t, "seal gave a different ciphertext or tag");
                    continue;
                }
            }
            tally.record(t, opened);
        }
    }
    tally.finish(
        "aes_gcm_test.json",
        (39, 27, 0),
        &format!(
            " [AES-256, 96-bit IV, via crypto::aead; {other_iv} AES-256 vectors with other IV sizes are not expressible]"
        ),
    );
    assert_eq!(other_iv, 39);
}

#[test]
fn aes_wrap() {
    let v = wycheproof("aes_wrap_test.json");
    let mut tally = Tally::default();
    let (mut by_length, mut by_integrity) = (0, 0);
    let mut must_reject = vec![108u64, 110];
    for g in groups(&v) {
        if g["keySize"] != 256 {
            continue;
        }
        for t in tests(g) {
            let kek = Secret32::try_from_slice(&hx(t, "key")).expect("32");
            let (msg, ct) = (hx(t, "msg"), hx(t, "ct"));
            let unwrapped = kw::unwrap(&kek, &ct);
            if [108, 110].contains(&tc(t)) {
                // aes-kw 0.3.1 accepts these two forgeries; our guard must not.
                assert!(
                    matches!(unwrapped, Err(Error::UnwrapFailed)),
                    "tc {} accepted",
                    tc(t)
                );
                must_reject.retain(|&id| id != tc(t));
            }
            let shape_ok = msg.len() == 32 && ct.len() == kw::WRAPPED_LEN;
            if result(t) == "valid" && shape_ok {
                let key = Secret32::try_from_slice(&msg).expect("32");
                if kw::wrap(&kek, &key)[..] != ct[..] {
                    tally.fail(t, "wrap gave a different blob");
                    continue;
                }
                tally.record(t, unwrapped.ok().map(|k| k.expose()[..] == msg[..]));
                continue;
            }
            // Every other shape is outside what keyward wraps: it must be
            // refused, whatever Wycheproof's verdict on the raw algorithm.
            match unwrapped {
                Ok(_) => tally.fail(t, "unwrap accepted a blob keyward never produces"),
                Err(_) if ct.len() == kw::WRAPPED_LEN => {
                    by_integrity += 1;
                    count_refused(&mut tally, t);
                }
                Err(_) => {
                    by_length += 1;
                    count_refused(&mut tally, t);
                }
            }
        }
    }
    assert!(
        must_reject.is_empty(),
        "tc {must_reject:?} missing from the file"
    );
    tally.finish(
        "aes_wrap_test.json",
        (4, 54, 1),
        &format!(
            " [AES-256 KEK, via crypto::kw; refused by the length guard {by_length}, \
             by the integrity check {by_integrity}; tc 108 and 110 rejected]"
        ),
    );
    assert_eq!(tally.valid_refused_by_design, 9);
    assert_eq!((by_length, by_integrity), (52, 12));
}

/// Counts a refused vector: invalid and acceptable ones as such; a valid one
/// of a size keyward does not wrap is refused by design.
fn count_refused(tally: &mut Tally, t: &Value) {
    if result(t) == "valid" {
        tally.valid_refused_by_design += 1;
    } else {
        tally.record(t, None);
    }
}

#[test]
fn hkdf_sha256() {
    let v = wycheproof("hkdf_sha256_test.json");
    let mut tally = Tally::default();
    let mut too_large = 0;
    for g in groups(&v) {
        for t in tests(g) {
            let size = usize::try_from(t["size"].as_u64().expect("size")).expect("usize");
            let out = aead::hkdf_sha256(&hx(t, "ikm"), &hx(t, "salt"), &hx(t, "info"), size);
            if let Err(Error::InvalidArgument { .. }) = &out {
                assert!(size > aead::HKDF_SHA256_MAX, "tc {} size {size}", tc(t));
                too_large += 1;
            }
            tally.record(t, out.ok().map(|okm| okm.expose() == &hx(t, "okm")[..]));
        }
    }
    tally.finish(
        "hkdf_sha256_test.json",
        (83, 3, 0),
        &format!(" [via crypto::aead::hkdf_sha256; {too_large} SizeTooLarge rejected]"),
    );
    assert_eq!(too_large, 3);
}

#[test]
fn ed25519() {
    let v = wycheproof("ed25519_test.json");
    let mut tally = Tally::default();
    for g in groups(&v) {
        let pk = hex::decode(g["publicKey"]["pk"].as_str().expect("pk")).expect("hex");
        for t in tests(g) {
            let ok = signing::verify_strict_raw(&pk, &hx(t, "msg"), &hx(t, "sig")).is_ok();
            tally.record(t, ok.then_some(true));
        }
    }
    tally.finish(
        "ed25519_test.json",
        (88, 63, 0),
        " [via crypto::signing::verify_strict_raw]",
    );
}

/// A Wycheproof private key (big-endian, possibly with a leading zero byte
/// or shorter than 32 bytes) as a P-256 secret key.
fn p256_secret(bytes: &[u8]) -> SecretKey {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut fixed = [0u8; 32];
    fixed[32 - trimmed.len()..].copy_from_slice(&trimmed);
    SecretKey::from_slice(&fixed).expect("Wycheproof private keys are valid scalars")
}

#[test]
fn ecdh_secp256r1_ecpoint() {
    let v = wycheproof("ecdh_secp256r1_ecpoint_test.json");
    let mut tally = Tally::default();
    for g in groups(&v) {
        for t in tests(g) {
            let secret = p256_secret(&hx(t, "private"));
            let outcome = ecies::parse_public_key(&hx(t, "public"))
                .ok()
                .map(|peer| ecies::ecdh(&secret, &peer).expose()[..] == hx(t, "shared")[..]);
            tally.record(t, outcome);
        }
    }
    tally.finish(
        "ecdh_secp256r1_ecpoint_test.json",
        (330, 24, 1),
        " [via crypto::ecies::parse_public_key + ecdh]",
    );
}

fn ecdsa_file(file: &str, expected: (usize, usize, usize), p1363: bool) {
    let v = wycheproof(file);
    let mut tally = Tally::default();
    for g in groups(&v) {
        let pk = hex::decode(g["publicKey"]["uncompressed"].as_str().expect("key")).expect("hex");
        for t in tests(g) {
            let (msg, sig) = (hx(t, "msg"), hx(t, "sig"));
            let ok = if p1363 {
                ecdsa::verify_p256_sha256_p1363(&pk, &msg, &sig)
            } else {
                ecdsa::verify_p256_sha256_der(&pk, &msg, &sig)
            }
            .is_ok();
            tally.record(t, ok.then_some(true));
        }
    }
    tally.finish(file, expected, " [via crypto::ecdsa]");
}

#[test]
fn ecdsa_secp256r1_sha256_der() {
    ecdsa_file("ecdsa_secp256r1_sha256_test.json", (174, 310, 0), false);
}

#[test]
fn ecdsa_secp256r1_sha256_p1363() {
    ecdsa_file("ecdsa_secp256r1_sha256_p1363_test.json", (173, 89, 0), true);
}

#[test]
fn rfc3394_through_kw() {
    let v = vectors("rfc/rfc3394_aes_kw.json");
    let all = v["tests"].as_array().expect("tests");
    assert_eq!(all.len(), 6);
    let (mut matched, mut refused) = (0, 0);
    for t in all {
        let (kek, data, ct) = (hx(t, "kek"), hx(t, "key_data"), hx(t, "ciphertext"));
        if t["id"] == "4.6" {
            let kek = Secret32::try_from_slice(&kek).expect("256-bit KEK");
            let key = Secret32::try_from_slice(&data).expect("256-bit data");
            assert_eq!(kw::wrap(&kek, &key)[..], ct[..], "RFC 3394 4.6 wrap");
            let back = kw::unwrap(&kek, &ct).expect("RFC 3394 4.6 unwrap");
            assert_eq!(back.expose()[..], data[..]);
            matched += 1;
        } else if kek.len() == 32 {
            // 128- and 192-bit data under a 256-bit KEK: not a keyward shape.
            let kek = Secret32::try_from_slice(&kek).expect("32");
            assert!(kw::unwrap(&kek, &ct).is_err(), "RFC 3394 {}", t["id"]);
            refused += 1;
        }
    }
    println!(
        "rfc3394_aes_kw.json: 4.6 (256-bit KEK, 256-bit data) wraps and unwraps byte for byte; \
         {refused} other 256-bit-KEK cases refused by the length guard"
    );
    assert_eq!((matched, refused), (1, 2));
}

#[test]
fn rfc8032_through_signing() {
    let v = vectors("rfc/rfc8032_ed25519.json");
    let all = v["tests"].as_array().expect("tests");
    for t in all {
        let seed = Secret32::try_from_slice(&hx(t, "secret_key")).expect("32");
        let pk = hx(t, "public_key");
        assert_eq!(signing::public_key(&seed)[..], pk[..], "{}", t["id"]);
        signing::verify_strict_raw(&pk, &hx(t, "message"), &hx(t, "signature"))
            .unwrap_or_else(|e| panic!("{}: {e}", t["id"]));
        let mut bad = hx(t, "signature");
        bad[0] ^= 1;
        assert!(signing::verify_strict_raw(&pk, &hx(t, "message"), &bad).is_err());
    }
    println!(
        "rfc8032_ed25519.json: {} vectors, public keys derived and signatures verified strictly",
        all.len()
    );
    assert_eq!(all.len(), 5);
}
