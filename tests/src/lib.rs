//! keyward-tests: the conformance suite every backend passes, written once
//! and instantiated per backend.
//!
//! A backend joins the suite by implementing [`Fixture`] (how to build the
//! backend, how to enroll, which secret is right, which hooks it supports)
//! and adding one file under `tests/tests/`:
//!
//! ```ignore
//! //! Conformance suite against the mock token.
//! keyward_tests::conformance_suite!(keyward_tests::fixtures::MockFixture::new());
//! ```
//!
//! The macro expands to one `#[test]` per case, so every case is a separate
//! nextest test and a failure names the case and the backend. The fixture
//! expression is evaluated afresh in every test. Cases come in two groups:
//!
//! - `backend::*` ([`cases`]): the [`keyward_kms::Backend`] trait alone —
//!   capabilities, enrollment, wrap/unwrap, tampering, wrong secrets, wrong
//!   or absent devices, signatures, public-key-only wraps.
//! - `service::*` ([`service_cases`]): the same backend as a protector of a
//!   real keystore through [`keyward_kms::Service`] — init, keys, encrypt,
//!   rotation of data keys and of the master key, lock and unlock.
//!
//! Instances: the mock token, the recovery key, the passphrase, the TPM on
//! swtpm ([`fixtures::tpm`]) and PKCS#11 on SoftHSM2 in `ecdh` and
//! `aes-gcm` mode ([`fixtures::pkcs11`]; these run each test in a process
//! of its own through `run_with = …`).
//!
//! Backends differ where the hardware does, and the fixture says how
//! instead of the cases assuming one device: [`WrongSecret`] states what
//! wrong secrets lead to (a PIV PIN blocks, a TPM locks out for a while,
//! SoftHSM never locks); [`Fixture::signing_public_key`] names the key
//! signatures verify under; a backend whose only wrap mode is
//! `DeviceAesGcm` has no public key to wrap to, and the cases that rely on
//! one check what applies to it instead and say so.
//!
//! Hooks a fixture does not support (unplugging a recovery key, bringing a
//! removed SoftHSM token back) make the corresponding case check only what
//! applies and say so on stderr.

pub mod callbacks;
pub mod cases;
pub mod daemon;
pub mod fixtures;
pub mod service_cases;
pub mod yubikey_fixture;

use std::path::Path;
use std::sync::Arc;

use keyward_kms::{Backend, EnrollRequest, Enrollment, SignAlgorithm, Signature};

pub use callbacks::TestCallbacks;

/// The callbacks a fixture hands out: one answers with the right secret,
/// the other with a well-formed wrong one.
#[derive(Debug, Clone)]
pub struct Answers {
    /// Answers with the right secret.
    pub right: Arc<TestCallbacks>,
    /// Answers with a wrong secret.
    pub wrong: Arc<TestCallbacks>,
}

impl Answers {
    /// `right` and `wrong`.
    pub fn new(right: TestCallbacks, wrong: TestCallbacks) -> Self {
        Self {
            right: Arc::new(right),
            wrong: Arc::new(wrong),
        }
    }

    /// Callbacks answering PIN prompts with `right` and with `wrong`.
    pub fn pins(right: &str, wrong: &str) -> Self {
        let pin = |secret| TestCallbacks::new().answer(keyward_kms::SecretKind::Pin, secret);
        Self::new(pin(right), pin(wrong))
    }

    /// How many PINs both were asked for, together.
    ///
    /// # Panics
    /// Past 2^64 prompts.
    pub fn pins_asked(&self) -> u64 {
        let asked = [&self.right, &self.wrong]
            .iter()
            .flat_map(|ui| ui.prompts())
            .filter(|p| p.kind == keyward_kms::SecretKind::Pin)
            .count();
        u64::try_from(asked).expect("a test asks fewer than 2^64 times")
    }
}

/// The arguments of `keyward sign --protector ID -i INPUT -o OUTPUT`.
pub fn sign_args<'a>(protector: &'a str, input: &'a str, output: &'a str) -> [&'a str; 7] {
    ["sign", "--protector", protector, "-i", input, "-o", output]
}

/// Whether `openssl dgst -sha256 -verify` accepts the DER ECDSA signature
/// in file `sig` over file `msg` with the public key in file `pem`.
///
/// # Panics
/// If openssl cannot run, or its answer and its exit code disagree.
pub fn openssl_verifies(pem: &Path, sig: &Path, msg: &Path) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(pem)
        .arg("-signature")
        .arg(sig)
        .arg(msg)
        .output()
        .expect("openssl installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.success(), text.contains("Verified OK"), "{text}");
    out.status.success()
}

/// Checks a DER ECDSA P-256 signature as a user would, with `openssl dgst
/// -sha256 -verify`: it verifies over `msg` ("Verified OK"), and not over
/// another message.
///
/// # Panics
/// If openssl cannot run, rejects the signature or accepts it over
/// another message.
pub fn assert_openssl_verifies(public_pem: &str, signature_der: &[u8], msg: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, contents) in [
        ("pub.pem", public_pem.as_bytes()),
        ("sig.der", signature_der),
        ("msg", msg),
        ("other", b"another message"),
    ] {
        std::fs::write(dir.path().join(name), contents).expect("write");
    }
    let verify = |file: &str| {
        // Without the descriptors tpm2-tss leaves open (see clean_command).
        keyward_hw_mocks::swtpm::clean_command("openssl")
            .current_dir(dir.path())
            .args(["dgst", "-sha256", "-verify", "pub.pem"])
            .args(["-signature", "sig.der", file])
            .output()
            .expect("openssl on PATH")
    };
    let ok = verify("msg");
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "openssl: {text}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(text.trim(), "Verified OK");
    let bad = verify("other");
    assert!(
        !bad.status.success(),
        "openssl accepted a wrong message: {}",
        String::from_utf8_lossy(&bad.stdout)
    );
}

/// What a wrong secret is for this backend: which error it gives, and what
/// happens when wrong secrets keep coming. Each variant states one real
/// device's semantics; the cases check exactly those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongSecret {
    /// A passphrase: [`keyward_kms::Error::WrongPassphrase`], no retry counter.
    Passphrase,
    /// A recovery key: [`keyward_kms::Error::WrongRecoveryKey`], no retry
    /// counter.
    RecoveryKey,
    /// A device PIN with `retries` tries (PIV, the mock token):
    /// [`keyward_kms::Error::WrongPin`] with the tries left, the last wrong
    /// try gives [`keyward_kms::Error::PinBlocked`], and the PIN stays
    /// blocked (only the PUK or a reset unblock it).
    Pin {
        /// Tries the device allows from its initial state.
        retries: u32,
    },
    /// A TPM PIN (the key's auth value) under the TPM's dictionary-attack
    /// protection: [`keyward_kms::Error::WrongPin`] with `retries_left`
    /// read from the lockout counter, counting down to `Some(0)`; the next
    /// attempt gives [`keyward_kms::Error::Lockout`] with
    /// `recovery_seconds` before any prompt. Never `PinBlocked`: a lockout
    /// heals with time (one failure forgiven every `recovery_seconds`) or
    /// with the lockout hierarchy's authorisation.
    TpmPin {
        /// `TPM_PT_MAX_AUTH_FAIL` as the fixture set it.
        max_tries: u32,
        /// `TPM_PT_LOCKOUT_INTERVAL` as the fixture set it; long enough
        /// that no failure is forgiven while a test runs.
        recovery_seconds: u64,
    },
    /// A PIN the device checks but never counts (SoftHSM2: docs/HARDWARE.md,
    /// "SoftHSM never locks a PIN"): [`keyward_kms::Error::WrongPin`] with
    /// `retries_left: None`, and the right PIN works after any number of
    /// wrong ones. Real PKCS#11 tokens lock after their own count; a
    /// fixture for one would use [`WrongSecret::Pin`].
    PinNeverLocks,
}

impl WrongSecret {
    /// The tries a fresh device reports, for the variants that count.
    pub fn counted_tries(self) -> Option<u32> {
        match self {
            Self::Pin { retries } => Some(retries),
            Self::TpmPin { max_tries, .. } => Some(max_tries),
            Self::Passphrase | Self::RecoveryKey | Self::PinNeverLocks => None,
        }
    }

    /// Whether the secret is a device PIN.
    pub fn is_pin(self) -> bool {
        matches!(
            self,
            Self::Pin { .. } | Self::TpmPin { .. } | Self::PinNeverLocks
        )
    }
}

/// How a fixture's [`Fixture::fail_next_after_pin`] fault shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidOperationFault {
    /// A one-shot failure after the PIN was accepted (the mock's fault
    /// injection): [`keyward_kms::Error::DeviceRemoved`], and the very next
    /// operation works.
    Transient,
    /// The device goes away for real while the PIN prompt is open (the
    /// fixture kills or removes it from inside the prompt callback), and
    /// the backend reports [`keyward_kms::Error::DeviceNotFound`]: it finds
    /// no device when it goes on after the prompt. Nothing works until
    /// [`Fixture::replug`].
    VanishesAsNotFound,
    /// As [`MidOperationFault::VanishesAsNotFound`], but the device's own
    /// answer is a generic failure the backend passes on as
    /// [`keyward_kms::Error::Device`] (SoftHSM answers `C_Login` on a token
    /// whose directory went away with `CKR_GENERAL_ERROR`). Health and the
    /// next operation then report the device absent.
    VanishesAsDeviceError,
}

/// The public key an enrollment's signatures verify under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningPublicKey {
    /// ECDSA P-256 with SHA-256, DER signatures.
    P256(p256::ecdsa::VerifyingKey),
    /// Ed25519, 64-byte signatures.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl SigningPublicKey {
    /// The key the enrollment's `public_key` names as a P-256 point.
    ///
    /// # Panics
    /// If `public_key` is not a P-256 point.
    pub fn p256_of(enrollment: &Enrollment) -> Self {
        Self::P256(
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&enrollment.public_key)
                .expect("the enrolled public key is a P-256 point"),
        )
    }

    /// The algorithm of signatures under this key.
    pub fn algorithm(&self) -> SignAlgorithm {
        match self {
            Self::P256(_) => SignAlgorithm::EcdsaP256Sha256,
            Self::Ed25519(_) => SignAlgorithm::Ed25519,
        }
    }

    /// Whether `signature` is a valid signature of `msg` under this key
    /// (strict Ed25519; DER ECDSA).
    pub fn verifies(&self, msg: &[u8], signature: &Signature) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        if signature.algorithm != self.algorithm() {
            return false;
        }
        match self {
            Self::P256(vk) => p256::ecdsa::Signature::from_der(&signature.bytes)
                .is_ok_and(|sig| vk.verify(msg, &sig).is_ok()),
            Self::Ed25519(vk) => ed25519_dalek::Signature::from_slice(&signature.bytes)
                .is_ok_and(|sig| vk.verify_strict(msg, &sig).is_ok()),
        }
    }
}

/// One backend under test, in a fresh state.
///
/// A fixture is built once per test; its callbacks keep their state (a
/// recovery key shown at enrollment is answered at unwrap) for that test.
pub trait Fixture {
    /// The backend, as the service would hold it.
    fn backend(&self) -> Arc<dyn Backend>;

    /// A request that enrolls successfully.
    fn enroll_request(&self) -> EnrollRequest;

    /// The callbacks this fixture hands out.
    fn answers(&self) -> &Answers;

    /// Callbacks that answer every prompt with the right secret.
    fn callbacks(&self) -> Arc<TestCallbacks> {
        self.answers().right.clone()
    }

    /// Callbacks that answer with a well-formed but wrong secret.
    fn wrong_callbacks(&self) -> Arc<TestCallbacks> {
        self.answers().wrong.clone()
    }

    /// What a wrong secret is for this backend.
    fn wrong_secret(&self) -> WrongSecret;

    /// The public key the enrollment's signatures verify under. By default
    /// the enrolled (wrapping) public key as a P-256 ECDSA key, which is
    /// what PIV and the mock sign with.
    ///
    /// # Panics
    /// If the enrollment has no such key.
    fn signing_public_key(&self, enrollment: &Enrollment) -> SigningPublicKey {
        SigningPublicKey::p256_of(enrollment)
    }

    /// Ends any authentication the backend keeps between operations, as
    /// locking the keystore should, so that the next unwrap or sign asks
    /// for the secret again. Cases call it before every operation whose
    /// prompt or wrong secret they check. A no-op for backends that ask
    /// every time.
    fn end_session(&self) {}

    /// Whether enrollments name a device (`device_id` is `Some`).
    fn has_device(&self) -> bool {
        false
    }

    /// Replaces the enrolled device with another one (another serial).
    /// Returns `false` if the fixture cannot.
    fn swap_device(&self) -> bool {
        false
    }

    /// Unplugs the enrolled device. Returns `false` if the fixture cannot.
    fn unplug(&self) -> bool {
        false
    }

    /// Whether [`Fixture::replug`] can bring the enrolled device back after
    /// [`Fixture::unplug`], [`Fixture::swap_device`] or a
    /// [`MidOperationFault::VanishesAsNotFound`] fault. Cases that take the
    /// device away only to bring it back ask first.
    fn can_replug(&self) -> bool {
        false
    }

    /// Plugs the enrolled device back in (after [`Fixture::unplug`],
    /// [`Fixture::swap_device`] or a vanishing fault). Returns `false` if
    /// the fixture cannot.
    fn replug(&self) -> bool {
        false
    }

    /// PINs sent to the device so far, if the fixture can count them.
    fn pin_requests(&self) -> Option<u64> {
        None
    }

    /// Arms a fault for the next operation that gets past the PIN prompt,
    /// and says how it will show. `None` if the fixture cannot do this
    /// honestly.
    fn fail_next_after_pin(&self) -> Option<MidOperationFault> {
        None
    }
}

/// The name libtest gives the test function `case` expanded in module
/// `module_path` (the crate name dropped): what
/// `keyward_hw_mocks::softhsm::isolated` re-runs in a child process.
#[doc(hidden)]
pub fn __test_name(module_path: &str, case: &str) -> String {
    match module_path.split_once("::") {
        Some((_, rest)) => format!("{rest}::{case}"),
        None => case.to_owned(),
    }
}

/// Runs a test body right here: the default runner of
/// [`conformance_suite!`]. `name` is the test's libtest name.
pub fn run_here(name: &str, body: impl FnOnce()) {
    let _ = name;
    body();
}

/// Expands to the whole conformance suite for one fixture: a module
/// `backend` with one `#[test]` per [`cases`] function and a module
/// `service` with one per [`service_cases`] function.
///
/// `$fixture` is an expression evaluated in each test; it may name items
/// of the calling file. With `run_with = path::to::runner`, every test
/// body (fixture construction included) runs as
/// `runner(test_name, || body)`, where `test_name` is the test's libtest
/// name: how a backend that needs a process of its own per test (SoftHSM2
/// reads its configuration once per process) re-runs the test in a child.
#[macro_export]
macro_rules! conformance_suite {
    ($fixture:expr) => {
        $crate::conformance_suite!($fixture, run_with = $crate::run_here);
    };
    ($fixture:expr, run_with = $runner:path) => {
        /// The Backend-level cases.
        mod backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests!(cases; $fixture; $runner;
                capabilities_are_consistent,
                enroll_returns_compressed_p256_key,
                enrollment_survives_json,
                wrap_unwrap_round_trip,
                wrap_is_randomised,
                wrong_aad_rejected,
                every_byte_flip_rejected,
                truncated_or_extended_blob_rejected,
                blob_for_another_enrollment_rejected,
                enrollment_of_another_kind_refused,
                wrong_secret_gives_typed_error,
                retry_limit,
                wrong_device_detected_before_pin,
                absent_device_is_device_not_found,
                failure_mid_operation_then_recovers,
                sign_verifies_with_enrolled_public_key,
                public_key_only_wrap_unwraps,
                health_reports_enrolled_device,
            );
        }

        /// The Service-level cases.
        mod service {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_tests!(service_cases; $fixture; $runner;
                lifecycle,
                wrong_secret_keeps_store_locked,
                master_rotation_needs_no_secret,
            );
        }
    };
}

/// Implementation detail of [`conformance_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($group:ident; $fixture:expr; $runner:path; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                $runner(
                    &$crate::__test_name(module_path!(), stringify!($case)),
                    || {
                        let fixture = $fixture;
                        $crate::$group::$case(&fixture);
                    },
                );
            }
        )+
    };
}
