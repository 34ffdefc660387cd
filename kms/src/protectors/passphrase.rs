//! The passphrase protector: a passphrase stretched with Argon2id.
//!
//! `seed = Argon2id(passphrase as UTF-8 bytes, salt, m, t, p, 32 bytes)`
//! (RFC 9106, version 0x13, no secret or associated data), then
//! [`ecies::scalar_from_seed`]`(seed, "keyward/v1/passphrase")`. The salt
//! (16 random bytes) and the cost parameters are stored in the enrollment:
//! `{"v":1,"kdf":"argon2id","m_kib":65536,"t":3,"p":1,"salt":"<32 hex>"}`.
//!
//! Default cost: m = 64 MiB, t = 3, p = 1. RFC 9106 §4 recommends, where
//! 2 GiB per derivation is too much, t = 3 and m = 64 MiB with p = 4 lanes.
//! We keep the memory and passes and use one lane: the `argon2` crate fills
//! lanes one after the other (no threads), and these machines have 2 cores
//! shared with other work, so extra lanes would add latency without making
//! an attacker's job any harder. One unlock with the defaults takes about
//! 160 ms on this project's 2-core machines (docs/FORMAT.md, "Passphrase",
//! and the ignored test `measure_default_unlock`).
//!
//! Parameters are bounded at enrollment *and* when read back from the
//! store: a descriptor edited to ask for 2^40 KiB is refused before any
//! memory is allocated.
//!
//! The passphrase is used exactly as typed (no trimming, no Unicode
//! normalisation): the same characters typed through a different input
//! method may encode differently, and we do not guess.

use secrecy::ExposeSecret;
use zeroize::Zeroize;

use crate::backend::{
    BackendKind, Callbacks, Capabilities, DeviceInfo, EnrollRequest, Enrollment, Health,
    SecretKind, SecretRequest, Signature, Wrapped,
};
use crate::crypto::ecies;
use crate::secret::{Secret32, random_bytes};
use crate::{Error, Result};

/// Lower bound on Argon2 memory (KiB): 8 MiB.
pub const MIN_M_KIB: u32 = 8 * 1024;
/// Upper bound on Argon2 memory (KiB): 4 GiB.
pub const MAX_M_KIB: u32 = 4 * 1024 * 1024;
/// Lower bound on Argon2 passes.
pub const MIN_T: u32 = 1;
/// Upper bound on Argon2 passes.
pub const MAX_T: u32 = 64;
/// Lower bound on Argon2 lanes.
pub const MIN_P: u32 = 1;
/// Upper bound on Argon2 lanes.
pub const MAX_P: u32 = 16;
/// Shortest passphrase accepted at enrollment, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 8;
/// Longest passphrase accepted at enrollment, in bytes.
pub const MAX_PASSPHRASE_BYTES: usize = 1024;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;

/// Enrollment option overriding the Argon2 memory cost (KiB).
pub const OPTION_M_KIB: &str = "argon2-m-kib";
/// Enrollment option overriding the Argon2 passes.
pub const OPTION_T: &str = "argon2-t";
/// Enrollment option overriding the Argon2 lanes.
pub const OPTION_P: &str = "argon2-p";

const KEY_LABEL: &[u8] = b"keyward/v1/passphrase";
const KDF_NAME: &str = "argon2id";

/// Argon2id cost parameters, always within the bounds above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    m_kib: u32,
    t: u32,
    p: u32,
}

impl KdfParams {
    /// The defaults: 64 MiB, 3 passes, 1 lane (see the module docs).
    pub const DEFAULT: Self = Self {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    /// Checked parameters.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if any is outside its bounds.
    pub fn new(m_kib: u64, t: u64, p: u64) -> Result<Self> {
        Self::checked(m_kib, t, p).map_err(|what| Error::InvalidArgument { what })
    }

    fn checked(m_kib: u64, t: u64, p: u64) -> Result<Self, String> {
        let bound = |name: &str, v: u64, lo: u32, hi: u32| -> Result<u32, String> {
            u32::try_from(v)
                .ok()
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| format!("{name} must be between {lo} and {hi} (got {v})"))
        };
        let m_kib = bound(OPTION_M_KIB, m_kib, MIN_M_KIB, MAX_M_KIB)?;
        let t = bound(OPTION_T, t, MIN_T, MAX_T)?;
        let p = bound(OPTION_P, p, MIN_P, MAX_P)?;
        // Argon2 needs at least 8 KiB per lane; always true here because
        // MIN_M_KIB >= 8 * MAX_P, kept as a check in case the bounds move.
        if u64::from(m_kib) < 8 * u64::from(p) {
            return Err(format!("{OPTION_M_KIB} must be at least 8 KiB per lane"));
        }
        Ok(Self { m_kib, t, p })
    }

    /// Memory in KiB.
    pub fn m_kib(self) -> u32 {
        self.m_kib
    }

    /// Passes.
    pub fn t(self) -> u32 {
        self.t
    }

    /// Lanes.
    pub fn p(self) -> u32 {
        self.p
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Derives the P-256 private key from a passphrase (exposed for test
/// vectors and benchmarks).
///
/// # Errors
/// [`Error::Malformed`] if Argon2 refuses the parameters (not reachable for
/// parameters built through [`KdfParams`]).
pub fn derive_key(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    params: KdfParams,
) -> Result<p256::SecretKey> {
    let argon_params =
        argon2::Params::new(params.m_kib, params.t, params.p, Some(32)).map_err(|_| {
            Error::Malformed {
                what: "Argon2 refused the passphrase protector parameters",
            }
        })?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut seed = [0u8; 32];
    let result = argon.hash_password_into(passphrase, salt, &mut seed);
    if result.is_err() {
        seed.zeroize();
        return Err(Error::Malformed {
            what: "Argon2 refused the passphrase or salt",
        });
    }
    let seed = Secret32::from_bytes(&mut seed);
    Ok(ecies::scalar_from_seed(&seed, KEY_LABEL))
}

/// The stored descriptor, validated.
struct Descriptor {
    params: KdfParams,
    salt: [u8; SALT_LEN],
}

impl Descriptor {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "v": 1,
            "kdf": KDF_NAME,
            "m_kib": self.params.m_kib,
            "t": self.params.t,
            "p": self.params.p,
            "salt": hex::encode(self.salt),
        })
    }

    /// Reads a stored descriptor. Every bound is checked before Argon2
    /// sees it, so an edited store cannot make us allocate without limit.
    fn from_json(params: &serde_json::Value) -> Result<Self> {
        let malformed = |what: &'static str| Error::Malformed { what };
        if params.get("kdf").and_then(serde_json::Value::as_str) != Some(KDF_NAME) {
            return Err(malformed(
                "passphrase protector descriptor names an unknown KDF",
            ));
        }
        let number = |name: &str| params.get(name).and_then(serde_json::Value::as_u64);
        let (Some(m_kib), Some(t), Some(p)) = (number("m_kib"), number("t"), number("p")) else {
            return Err(malformed(
                "passphrase protector descriptor lacks its Argon2 parameters",
            ));
        };
        let params_checked = KdfParams::checked(m_kib, t, p).map_err(|_| {
            malformed("passphrase protector descriptor has Argon2 parameters out of bounds")
        })?;
        let salt = params
            .get("salt")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| hex::decode(s).ok())
            .and_then(|s| <[u8; SALT_LEN]>::try_from(s.as_slice()).ok())
            .ok_or_else(|| malformed("passphrase protector descriptor has no valid salt"))?;
        Ok(Self {
            params: params_checked,
            salt,
        })
    }
}

/// The passphrase backend.
#[derive(Debug, Default)]
pub struct Backend {
    defaults: KdfParams,
}

impl Backend {
    /// With the default Argon2 parameters ([`KdfParams::DEFAULT`]).
    pub fn new() -> Self {
        Self {
            defaults: KdfParams::DEFAULT,
        }
    }

    /// With other default parameters for new enrollments (enrollment
    /// options still override them).
    pub fn with_defaults(defaults: KdfParams) -> Self {
        Self { defaults }
    }

    /// The parameters for a new enrollment: defaults, overridden by the
    /// `argon2-*` options.
    fn params_for(&self, req: &EnrollRequest) -> Result<KdfParams> {
        let options = req.options.passphrase()?;
        let or_default = |v: Option<u32>, default: u32| u64::from(v.unwrap_or(default));
        KdfParams::new(
            or_default(options.m_kib, self.defaults.m_kib),
            or_default(options.t, self.defaults.t),
            or_default(options.p, self.defaults.p),
        )
    }

    /// Asks for the passphrase and derives the key, checking it against
    /// the enrollment.
    fn ask_and_derive(
        enrollment: &Enrollment,
        ui: &dyn Callbacks,
    ) -> Result<(p256::SecretKey, [u8; ecies::POINT_LEN])> {
        let enrolled = super::enrolled_key(enrollment, BackendKind::Passphrase)?;
        let descriptor = Descriptor::from_json(&enrollment.params)?;
        let typed = ui.request_secret(&SecretRequest {
            kind: SecretKind::Passphrase,
            description: "passphrase",
            retries_left: None,
        })?;
        let derived = derive_key(
            typed.expose_secret().as_bytes(),
            &descriptor.salt,
            descriptor.params,
        )?;
        super::check_derived(&derived, &enrolled, Error::WrongPassphrase)?;
        Ok((derived, enrolled))
    }
}

/// Refuses passphrases we will not enroll.
fn check_new_passphrase(passphrase: &str) -> Result<()> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(Error::WeakPassphrase {
            reason: "shorter than 8 characters",
        });
    }
    if passphrase.len() > MAX_PASSPHRASE_BYTES {
        return Err(Error::WeakPassphrase {
            reason: "longer than 1024 bytes",
        });
    }
    Ok(())
}

impl crate::Backend for Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::Passphrase
    }

    fn capabilities(&self) -> Capabilities {
        super::capabilities()
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(Vec::new())
    }

    /// Asks for a new passphrase ([`SecretKind::NewPassphrase`]; the UI
    /// confirms it) and stores the salt, parameters and public key.
    /// Options: [`crate::backend::options::Argon2Options`].
    fn enroll(&self, req: &EnrollRequest, ui: &dyn Callbacks) -> Result<Enrollment> {
        let params = self.params_for(req)?;
        let description = if req.label.is_empty() {
            "new passphrase".to_owned()
        } else {
            format!("new passphrase for {:?}", req.label)
        };
        let passphrase = ui.request_secret(&SecretRequest {
            kind: SecretKind::NewPassphrase,
            description: &description,
            retries_left: None,
        })?;
        check_new_passphrase(passphrase.expose_secret())?;
        let mut salt = [0u8; SALT_LEN];
        random_bytes(&mut salt)?;
        let derived = derive_key(passphrase.expose_secret().as_bytes(), &salt, params)?;
        let descriptor = Descriptor { params, salt };
        Ok(Enrollment {
            kind: BackendKind::Passphrase,
            device_id: None,
            public_key: ecies::compress(&derived.public_key()).to_vec(),
            params: descriptor.to_json(),
        })
    }

    fn wrap(&self, enrollment: &Enrollment, secret: &Secret32, aad: &[u8]) -> Result<Wrapped> {
        Descriptor::from_json(&enrollment.params)?;
        super::wrap(enrollment, BackendKind::Passphrase, secret, aad)
    }

    fn unwrap(
        &self,
        enrollment: &Enrollment,
        wrapped: &Wrapped,
        aad: &[u8],
        ui: &dyn Callbacks,
    ) -> Result<Secret32> {
        super::enrolled_key(enrollment, BackendKind::Passphrase)?;
        // A blob that cannot be opened is reported before the user types
        // and before Argon2 runs.
        ecies::ephemeral_key(&wrapped.0)?;
        let (derived, enrolled) = Self::ask_and_derive(enrollment, ui)?;
        super::open(&derived, &enrolled, wrapped, aad)
    }

    fn sign(&self, enrollment: &Enrollment, msg: &[u8], ui: &dyn Callbacks) -> Result<Signature> {
        let (derived, _) = Self::ask_and_derive(enrollment, ui)?;
        super::sign(&derived, msg)
    }

    fn health(&self, enrollment: &Enrollment) -> Result<Health> {
        let mut health = super::health(enrollment, BackendKind::Passphrase, "passphrase");
        if let Err(e) = Descriptor::from_json(&enrollment.params) {
            health.matches = false;
            health.detail = format!("the stored descriptor is unusable: {e}");
        }
        Ok(health)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::backend::options::{Argon2Options, YubikeyOptions};
    use crate::backend::{Backend as _, EnrollOptions, Notice};
    use crate::secret::SecretString;

    /// Answers every secret request with `answer` and records the kinds.
    struct Answer {
        answer: String,
        asked: Mutex<Vec<SecretKind>>,
    }

    impl Answer {
        fn new(answer: &str) -> Self {
            Self {
                answer: answer.to_owned(),
                asked: Mutex::new(Vec::new()),
            }
        }
    }

    impl Callbacks for Answer {
        fn request_secret(&self, request: &SecretRequest<'_>) -> Result<SecretString> {
            self.asked.lock().expect("lock").push(request.kind);
            Ok(SecretString::from(self.answer.clone()))
        }
        fn notify(&self, _: &Notice<'_>) {}
        fn show_secret(&self, _: &str, _: &SecretString) -> Result<()> {
            Ok(())
        }
    }

    fn small(edit: impl FnOnce(&mut Argon2Options)) -> EnrollRequest {
        let mut options = Argon2Options {
            m_kib: Some(8192),
            t: Some(1),
            p: None,
        };
        edit(&mut options);
        EnrollRequest {
            label: "test".into(),
            device: None,
            options: EnrollOptions::Passphrase(options),
        }
    }

    fn invalid_argument(r: Result<Enrollment>) -> String {
        match r {
            Err(Error::InvalidArgument { what }) => what,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn enrollment_options_are_bounded() {
        let b = Backend::new();
        let ui = Answer::new("correct horse");
        let costs = |m_kib, t, p| Argon2Options {
            m_kib: Some(m_kib),
            t: Some(t),
            p: Some(p),
        };
        for (key, options) in [
            (OPTION_M_KIB, costs(8191, 1, 1)),
            (OPTION_M_KIB, costs(4_194_305, 1, 1)),
            (OPTION_M_KIB, costs(u32::MAX, 1, 1)),
            (OPTION_T, costs(8192, 0, 1)),
            (OPTION_T, costs(8192, 65, 1)),
            (OPTION_P, costs(8192, 1, 0)),
            (OPTION_P, costs(8192, 1, 17)),
        ] {
            let what = invalid_argument(b.enroll(&small(|o| *o = options), &ui));
            assert!(what.contains(key), "{options:?}: {what}");
        }
        // Nothing was asked: parameters are checked before the prompt.
        assert!(ui.asked.lock().expect("lock").is_empty());
        let yubikey = EnrollRequest {
            options: EnrollOptions::Yubikey(YubikeyOptions::default()),
            ..EnrollRequest::default()
        };
        let what = invalid_argument(b.enroll(&yubikey, &ui));
        assert!(what.contains("yubikey"), "{what}");
    }

    #[test]
    fn bounds_are_inclusive() {
        assert!(KdfParams::new(u64::from(MIN_M_KIB), 1, 1).is_ok());
        assert!(KdfParams::new(u64::from(MAX_M_KIB), u64::from(MAX_T), u64::from(MAX_P)).is_ok());
        assert!(KdfParams::new(u64::from(MIN_M_KIB) - 1, 1, 1).is_err());
        assert!(KdfParams::new(1 << 40, 1, 1).is_err());
    }

    #[test]
    fn short_passphrase_refused() {
        let b = Backend::new();
        for weak in ["", "1234567", "sev3n!!"] {
            assert!(matches!(
                b.enroll(&small(|_| ()), &Answer::new(weak)),
                Err(Error::WeakPassphrase { .. })
            ));
        }
        // Eight characters, counted as characters (these are 16 bytes).
        let ok = b
            .enroll(&small(|_| ()), &Answer::new("ÄÖÜäöüßé"))
            .expect("8 characters");
        assert_eq!(ok.kind, BackendKind::Passphrase);
        let long = "x".repeat(MAX_PASSPHRASE_BYTES + 1);
        assert!(matches!(
            b.enroll(&small(|_| ()), &Answer::new(&long)),
            Err(Error::WeakPassphrase { .. })
        ));
    }

    #[test]
    fn enroll_asks_for_a_new_passphrase_and_stores_params() {
        let b = Backend::new();
        let ui = Answer::new("correct horse");
        let e = b.enroll(&small(|o| o.p = Some(2)), &ui).expect("enroll");
        assert_eq!(*ui.asked.lock().expect("lock"), [SecretKind::NewPassphrase]);
        assert_eq!(e.params["v"], 1);
        assert_eq!(e.params["kdf"], "argon2id");
        assert_eq!(e.params["m_kib"], 8192);
        assert_eq!(e.params["t"], 1);
        assert_eq!(e.params["p"], 2);
        assert_eq!(e.params["salt"].as_str().map(str::len), Some(32));
        assert_eq!(e.public_key.len(), 33);
        assert_eq!(e.device_id, None);
        // A second enrollment of the same passphrase gets another salt.
        let e2 = b.enroll(&small(|o| o.p = Some(2)), &ui).expect("enroll");
        assert_ne!(e.params["salt"], e2.params["salt"]);
        assert_ne!(e.public_key, e2.public_key);
    }

    #[test]
    fn tampered_descriptors_refused_before_prompt_or_allocation() {
        let b = Backend::new();
        let ui = Answer::new("correct horse");
        let e = b.enroll(&small(|_| ()), &ui).expect("enroll");
        let secret = Secret32::random().expect("rng");
        let w = b.wrap(&e, &secret, b"aad").expect("wrap");
        ui.asked.lock().expect("lock").clear();
        let edits: [(&str, serde_json::Value); 12] = [
            ("m_kib", serde_json::json!(1u64 << 40)),
            ("m_kib", serde_json::json!(u64::from(MAX_M_KIB) + 1)),
            ("m_kib", serde_json::json!(1024)),
            ("m_kib", serde_json::json!(-5)),
            ("m_kib", serde_json::json!("8192")),
            ("t", serde_json::json!(0)),
            ("t", serde_json::json!(1_000_000)),
            ("p", serde_json::json!(1u64 << 33)),
            ("kdf", serde_json::json!("scrypt")),
            ("salt", serde_json::json!("00")),
            ("salt", serde_json::json!("zz".repeat(16))),
            ("v", serde_json::json!(2)),
        ];
        for (field, value) in edits {
            let mut edited = e.clone();
            edited.params[field] = value.clone();
            let err = b
                .unwrap(&edited, &w, b"aad", &ui)
                .expect_err("edited descriptor");
            assert!(
                matches!(err, Error::Malformed { .. }),
                "{field}={value}: {err:?}"
            );
            assert!(!b.health(&edited).expect("health").matches);
        }
        let mut missing = e.clone();
        missing
            .params
            .as_object_mut()
            .expect("object")
            .remove("salt");
        assert!(b.unwrap(&missing, &w, b"aad", &ui).is_err());
        assert!(ui.asked.lock().expect("lock").is_empty());
        // The untouched descriptor still works.
        let out = b.unwrap(&e, &w, b"aad", &ui).expect("unwrap");
        assert_eq!(out.expose(), secret.expose());
    }

    #[test]
    fn wrong_passphrase_is_typed() {
        let b = Backend::new();
        let e = b
            .enroll(&small(|_| ()), &Answer::new("correct horse"))
            .expect("enroll");
        let secret = Secret32::random().expect("rng");
        let w = b.wrap(&e, &secret, b"aad").expect("wrap");
        for wrong in ["correct horsE", "correct horse ", ""] {
            assert!(matches!(
                b.unwrap(&e, &w, b"aad", &Answer::new(wrong)),
                Err(Error::WrongPassphrase)
            ));
        }
        // Right passphrase, tampered blob: not reported as a wrong passphrase.
        let mut t = w.clone();
        t.0[50] ^= 1;
        assert!(matches!(
            b.unwrap(&e, &t, b"aad", &Answer::new("correct horse")),
            Err(Error::UnwrapFailed)
        ));
    }

    /// docs/FORMAT.md, "Passphrase", test vector.
    #[test]
    fn format_vector() {
        let salt: [u8; SALT_LEN] = std::array::from_fn(|i| i as u8);
        let params = KdfParams::new(8192, 1, 1).expect("in bounds");
        let key = derive_key(b"correct horse battery staple", &salt, params).expect("derive");
        assert_eq!(
            hex::encode(ecies::compress(&key.public_key())),
            VECTOR_PUBLIC_KEY
        );
        assert_eq!(
            hex::encode(key.to_bytes()),
            "95232739943374add64a4a1e7be41653a7ea2a3363b0819f263095d5e84f5336"
        );
    }

    const VECTOR_PUBLIC_KEY: &str =
        "0296ca0c2857540d01b82b8d269ca66ab5e2c61acbf7a84e13b14b50d11175feb6";

    /// Prints how long one unlock takes with the default parameters (the
    /// figure in docs/FORMAT.md). Run with `--ignored --nocapture`.
    #[test]
    #[ignore = "timing measurement, not a check"]
    fn measure_default_unlock() {
        let salt = [7u8; SALT_LEN];
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let key = derive_key(b"correct horse battery staple", &salt, KdfParams::DEFAULT)
                .expect("derive");
            times.push(start.elapsed());
            drop(key);
        }
        times.sort();
        println!(
            "argon2id m=64MiB t=3 p=1: {times:?} (median {:?})",
            times[2]
        );
    }
}
