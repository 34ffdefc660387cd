//! Commands against one TPM `Context`, inside a [`Scope`] that flushes
//! every transient object and session it created when it ends, on success
//! and on every error path.
//!
//! We flush eagerly because swtpm (and a TPM reached through
//! `/dev/tpm0` rather than the kernel resource manager) has only three
//! transient object slots shared with every other client; a fourth load
//! fails with `TPM_RC_OBJECT_MEMORY` (0x902).

use p256::PublicKey;
use p256::elliptic_curve::sec1::ToSec1Point;
use tss_esapi::Context;
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket,
    KeyDerivationFunctionScheme, PcrSelectSize, PcrSelectionListBuilder, PcrSlot, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinition,
    SymmetricDefinitionObject, TaggedProperty, TaggedTpmPropertyList,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use zeroize::Zeroize;

use keyward_kms::secret::Secret32;

use super::descriptor::{self, KeyBlob};

/// A failed TPM command: which one, and the TSS error.
#[derive(Debug)]
pub(crate) struct Fail {
    /// The TPM command or ESAPI call.
    pub(crate) op: &'static str,
    /// What tss-esapi returned.
    pub(crate) err: tss_esapi::Error,
}

/// Attaches the command name to a tss-esapi result.
pub(crate) trait Op<T> {
    /// Names the failing command.
    fn op(self, name: &'static str) -> Result<T, Fail>;
}

impl<T> Op<T> for tss_esapi::Result<T> {
    fn op(self, name: &'static str) -> Result<T, Fail> {
        self.map_err(|err| Fail { op: name, err })
    }
}

/// A wrapper-level failure (bad data from the TPM or from the descriptor).
fn wrapper(op: &'static str) -> Fail {
    Fail {
        op,
        err: tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongValueFromTpm),
    }
}

/// Result of device commands.
pub(crate) type R<T> = Result<T, Fail>;

/// Dictionary-attack state, read fresh with `TPM2_GetCapability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DaState {
    /// `TPM_PT_LOCKOUT_COUNTER`.
    pub(crate) failures: u32,
    /// `TPM_PT_MAX_AUTH_FAIL`.
    pub(crate) max_tries: u32,
    /// `TPM_PT_LOCKOUT_INTERVAL`: seconds until one failure is forgiven.
    pub(crate) interval: u32,
    /// `TPMA_PERMANENT.inLockout`, or the counter at the maximum.
    pub(crate) in_lockout: bool,
}

impl DaState {
    /// Authorisation attempts left before lockout.
    pub(crate) fn retries_left(&self) -> u32 {
        self.max_tries.saturating_sub(self.failures)
    }
}

/// What kind of authorisation session to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    /// A policy session (the key has an authPolicy).
    Policy,
    /// An HMAC session (the key has no policy and an empty auth value).
    Hmac,
}

/// A unit of TPM work. Everything it loads or starts is flushed when it is
/// dropped, in reverse order.
pub(crate) struct Scope<'a> {
    ctx: &'a mut Context,
    live: Vec<ObjectHandle>,
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        while let Some(handle) = self.live.pop() {
            if let Err(e) = self.ctx.flush_context(handle) {
                tracing::debug!(rc = %super::rc::show(&e), "flushing a transient handle failed");
            }
        }
    }
}

impl<'a> Scope<'a> {
    /// Starts a scope on `ctx`.
    pub(crate) fn new(ctx: &'a mut Context) -> Self {
        Self {
            ctx,
            live: Vec::new(),
        }
    }

    /// Flushes `handle` now (to free its slot) instead of at the end.
    pub(crate) fn flush(&mut self, handle: ObjectHandle) -> R<()> {
        self.live.retain(|h| *h != handle);
        self.ctx.flush_context(handle).op("FlushContext")
    }

    /// Re-derives the storage root key (TPM2_CreatePrimary under the owner
    /// hierarchy with the TCG SRK template, docs/TPM.md) and returns its
    /// handle and public key. The same TPM always gives the same key.
    pub(crate) fn srk(&mut self) -> R<(KeyHandle, PublicKey)> {
        let template = srk_template().op("SRK template")?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .op("CreatePrimary")?;
        self.live.push(created.key_handle.into());
        let point = ecc_public_key(&created.out_public).ok_or_else(|| wrapper("CreatePrimary"))?;
        Ok((created.key_handle, point))
    }

    /// Starts a session salted with (encrypted to) the SRK, with
    /// AES-128-CFB parameter encryption of the command's first parameter
    /// when `encrypt_command` and of the response's when
    /// `encrypt_response`. Salting means a bus observer can neither
    /// brute-force the PIN from the HMAC nor decrypt parameters.
    ///
    /// We turn on only the directions that carry a secret: with tpm2-tss
    /// 3.2 every ESAPI hash or HMAC creates a fresh OpenSSL 3 library
    /// context (about 1 ms each here), so each needless KDFa costs a
    /// millisecond (docs/TPM.md, "Timings").
    pub(crate) fn salted_session(
        &mut self,
        srk: KeyHandle,
        kind: SessionKind,
        encrypt_command: bool,
        encrypt_response: bool,
    ) -> R<AuthSession> {
        let session_type = match kind {
            SessionKind::Policy => SessionType::Policy,
            SessionKind::Hmac => SessionType::Hmac,
        };
        let session = self
            .ctx
            .start_auth_session(
                Some(srk),
                None,
                None,
                session_type,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .op("StartAuthSession")?
            .ok_or_else(|| wrapper("StartAuthSession"))?;
        self.live.push(SessionHandle::from(session).into());
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(encrypt_command)
            .with_encrypt(encrypt_response)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attributes, mask)
            .op("TR_SetAttributes")?;
        Ok(session)
    }

    /// Runs the key's policy in `session`: PolicyPCR over `pcrs` (the TPM
    /// hashes the current values; a mismatch surfaces as
    /// `TPM_RC_POLICY_FAIL` when the key is used), then PolicyAuthValue.
    /// Same order as [`descriptor::policy_digest`].
    pub(crate) fn run_policy(&mut self, session: AuthSession, pin: bool, pcrs: &[u8]) -> R<()> {
        let policy = PolicySession::try_from(session).op("PolicySession")?;
        if !pcrs.is_empty() {
            let selection = pcr_selection(pcrs).op("PCR selection")?;
            self.ctx
                .execute_without_session(|ctx| ctx.policy_pcr(policy, Digest::default(), selection))
                .op("PolicyPCR")?;
        }
        if pin {
            self.ctx
                .execute_without_session(|ctx| ctx.policy_auth_value(policy))
                .op("PolicyAuthValue")?;
        }
        Ok(())
    }

    /// Creates a key under `parent` (TPM2_Create) through `session`, which
    /// encrypts the new key's auth value on the way in.
    pub(crate) fn create(
        &mut self,
        parent: KeyHandle,
        session: AuthSession,
        template: Public,
        auth: &[u8],
    ) -> R<KeyBlob> {
        let auth = Auth::try_from(auth).op("auth value")?;
        let created = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(parent, template, Some(auth), None, None, None)
            })
            .op("Create")?;
        let public = tss_esapi::structures::PublicBuffer::try_from(created.out_public)
            .and_then(|b| b.marshall())
            .op("marshal TPM2B_PUBLIC")?;
        Ok(KeyBlob {
            public: hex::encode(public),
            private: hex::encode(descriptor::tpm2b(created.out_private.value())),
        })
    }

    /// Loads a stored key under the SRK (TPM2_Load; the SRK's auth is
    /// empty) and returns its handle.
    pub(crate) fn load(&mut self, srk: KeyHandle, blob: &Blob) -> R<KeyHandle> {
        let handle = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.load(srk, blob.private.clone(), blob.public.clone())
            })
            .op("Load")?;
        self.live.push(handle.into());
        Ok(handle)
    }

    /// Sets the auth value ESAPI uses for `key` (the PIN's hash, or empty).
    pub(crate) fn set_auth(&mut self, key: KeyHandle, auth: &[u8]) -> R<()> {
        let auth = Auth::try_from(auth).op("auth value")?;
        self.ctx.tr_set_auth(key.into(), auth).op("TR_SetAuth")
    }

    /// TPM2_ECDH_ZGen: the x-coordinate of `d * point` with the key's
    /// private scalar `d`.
    pub(crate) fn ecdh_zgen(
        &mut self,
        session: AuthSession,
        key: KeyHandle,
        point: &PublicKey,
    ) -> R<Secret32> {
        let uncompressed = point.to_sec1_point(false);
        let bytes = uncompressed.as_bytes();
        let in_point = EccPoint::new(
            EccParameter::try_from(&bytes[1..33]).op("ECC point")?,
            EccParameter::try_from(&bytes[33..65]).op("ECC point")?,
        );
        let out = self
            .ctx
            .execute_with_session(Some(session), |ctx| ctx.ecdh_z_gen(key, in_point))
            .op("ECDH_ZGen")?;
        let x = out.x().value();
        if x.len() > 32 {
            return Err(wrapper("ECDH_ZGen"));
        }
        let mut z = [0u8; 32];
        z[32 - x.len()..].copy_from_slice(x);
        Ok(Secret32::from_bytes(&mut z))
    }

    /// TPM2_Sign with ECDSA/SHA-256 over a host-computed SHA-256 digest;
    /// returns `(r, s)`, each 32 bytes big-endian.
    pub(crate) fn sign(
        &mut self,
        session: AuthSession,
        key: KeyHandle,
        digest: &[u8; 32],
    ) -> R<([u8; 32], [u8; 32])> {
        let digest = Digest::try_from(digest.as_slice()).op("digest")?;
        // A null ticket: the key is not restricted, so the TPM does not
        // need proof that it hashed the message itself.
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: tss_esapi::tss2_esys::TPM2B_DIGEST::default(),
        })
        .op("hashcheck ticket")?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self
            .ctx
            .execute_with_session(Some(session), |ctx| ctx.sign(key, digest, scheme, ticket))
            .op("Sign")?;
        let Signature::EcDsa(sig) = signature else {
            return Err(wrapper("Sign"));
        };
        let r = fixed32(sig.signature_r().value()).ok_or_else(|| wrapper("Sign"))?;
        let s = fixed32(sig.signature_s().value()).ok_or_else(|| wrapper("Sign"))?;
        Ok((r, s))
    }

    /// Up to `count` TPM properties from `first` on, read with
    /// TPM2_GetCapability.
    fn properties(&mut self, first: PropertyTag, count: u32) -> R<TaggedTpmPropertyList> {
        let (data, _) = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.get_capability(CapabilityType::TpmProperties, u32::from(first), count)
            })
            .op("GetCapability")?;
        match data {
            CapabilityData::TpmProperties(props) => Ok(props),
            _ => Err(wrapper("GetCapability")),
        }
    }

    /// The dictionary-attack state, read with TPM2_GetCapability (never
    /// the cached `get_tpm_property`, whose lockout counter stays at its
    /// first value for the Context's life).
    pub(crate) fn da_state(&mut self) -> R<DaState> {
        let props = self.properties(PropertyTag::Permanent, 32)?;
        let get = |tag| props.find(tag).map(TaggedProperty::value);
        let failures = get(PropertyTag::LockoutCounter).ok_or_else(|| wrapper("GetCapability"))?;
        let max_tries = get(PropertyTag::MaxAuthFail).ok_or_else(|| wrapper("GetCapability"))?;
        let interval = get(PropertyTag::LockoutInterval).unwrap_or(0);
        // TPMA_PERMANENT.inLockout is bit 9.
        let flag = get(PropertyTag::Permanent).is_some_and(|p| p & (1 << 9) != 0);
        Ok(DaState {
            failures,
            max_tries,
            interval,
            in_lockout: flag || (max_tries > 0 && failures >= max_tries),
        })
    }

    /// The SHA-256 bank values of `pcrs`, in the given (ascending) order.
    pub(crate) fn pcr_values(&mut self, pcrs: &[u8]) -> R<Vec<[u8; 32]>> {
        if pcrs.is_empty() {
            return Ok(Vec::new());
        }
        let selection = pcr_selection(pcrs).op("PCR selection")?;
        let data = self
            .ctx
            .execute_without_session(|ctx| tss_esapi::abstraction::pcr::read_all(ctx, selection))
            .op("PCR_Read")?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or_else(|| wrapper("PCR_Read"))?;
        pcrs.iter()
            .map(|&pcr| {
                let slot = pcr_slot(pcr).op("PCR slot")?;
                bank.get_digest(slot)
                    .and_then(|d| <[u8; 32]>::try_from(d.value()).ok())
                    .ok_or_else(|| wrapper("PCR_Read"))
            })
            .collect()
    }

    /// Manufacturer (four ASCII characters) and firmware version.
    pub(crate) fn vendor(&mut self) -> R<(String, String)> {
        let props = self.properties(PropertyTag::Manufacturer, 8)?;
        let get = |tag| props.find(tag).map_or(0, TaggedProperty::value);
        let maker: String = get(PropertyTag::Manufacturer)
            .to_be_bytes()
            .iter()
            .filter(|b| b.is_ascii_graphic())
            .map(|&b| char::from(b))
            .collect();
        let v1 = get(PropertyTag::FirmwareVersion1);
        let v2 = get(PropertyTag::FirmwareVersion2);
        Ok((
            maker,
            format!("{}.{}.{}.{}", v1 >> 16, v1 & 0xffff, v2 >> 16, v2 & 0xffff),
        ))
    }
}

/// A stored key, parsed.
pub(crate) struct Blob {
    /// `TPMT_PUBLIC`.
    pub(crate) public: Public,
    /// `TPM2B_PRIVATE` body.
    pub(crate) private: Private,
}

impl Blob {
    /// Parses a [`KeyBlob`] from the descriptor.
    pub(crate) fn parse(blob: &KeyBlob) -> keyward_kms::Result<Self> {
        let malformed = || keyward_kms::Error::Malformed {
            what: "TPM key blob in enrollment",
        };
        let public_bytes = hex::decode(&blob.public).map_err(|_| malformed())?;
        let mut private_bytes = hex::decode(&blob.private).map_err(|_| malformed())?;
        let public = tss_esapi::structures::PublicBuffer::unmarshall(&public_bytes)
            .and_then(Public::try_from)
            .map_err(|_| malformed())?;
        let private =
            Private::try_from(descriptor::from_tpm2b(&private_bytes)?).map_err(|_| malformed())?;
        private_bytes.zeroize();
        Ok(Self { public, private })
    }

    /// The P-256 public key of the stored object.
    pub(crate) fn public_key(&self) -> Option<PublicKey> {
        ecc_public_key(&self.public)
    }
}

/// The SRK template of the TCG "TPM v2.0 Provisioning Guidance" (7.5.1,
/// ECC NIST P-256 storage key, EK Credential Profile template L-2
/// parameters): a restricted decryption key with AES-128-CFB, noDA,
/// userWithAuth with an empty auth value, empty authPolicy, and a unique
/// field of two 32-byte zero coordinates. CreatePrimary with the same
/// template under the same owner seed always gives the same key, so
/// nothing has to be persisted in the TPM. The marshalled bytes are a test
/// vector in docs/TPM.md.
fn srk_template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(vec![0u8; 32])?,
            EccParameter::try_from(vec![0u8; 32])?,
        ))
        .build()
}

/// What a keyward key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRole {
    /// ECDH (TPM2_ECDH_ZGen): an unrestricted decryption key.
    Ecdh,
    /// ECDSA P-256 / SHA-256 signing.
    Sign,
}

/// The template of a keyward key under the SRK: P-256, fixedTPM and
/// fixedParent (never exportable), TPM-generated, with `policy` as its
/// authPolicy. With a policy, userWithAuth is clear so the policy is the
/// only way to use it; without one (no PIN, no PCRs) it is used with its
/// empty auth value. Without a PIN it is noDA: there is no secret to guess,
/// and a dictionary-attack lockout caused by someone else must not stop an
/// unattended unlock.
pub(crate) fn key_template(
    role: KeyRole,
    policy: Option<&[u8; 32]>,
    pin: bool,
) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(policy.is_none())
        .with_no_da(!pin)
        .with_restricted(false)
        .with_decrypt(role == KeyRole::Ecdh)
        .with_sign_encrypt(role == KeyRole::Sign)
        .build()?;
    let params = match role {
        KeyRole::Ecdh => PublicEccParametersBuilder::new()
            .with_ecc_scheme(EccScheme::EcDh(HashScheme::new(HashingAlgorithm::Sha256)))
            .with_curve(EccCurve::NistP256)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .with_is_decryption_key(true)
            .with_restricted(false)
            .build()?,
        KeyRole::Sign => PublicEccParametersBuilder::new_unrestricted_signing_key(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )
        .build()?,
    };
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default());
    if let Some(policy) = policy {
        builder = builder.with_auth_policy(Digest::try_from(policy.as_slice())?);
    }
    builder.build()
}

/// The P-256 point in an ECC public area, validated.
pub(crate) fn ecc_public_key(public: &Public) -> Option<PublicKey> {
    let Public::Ecc { unique, .. } = public else {
        return None;
    };
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[1..33].copy_from_slice(&fixed32(unique.x().value())?);
    sec1[33..].copy_from_slice(&fixed32(unique.y().value())?);
    PublicKey::from_sec1_bytes(&sec1).ok()
}

/// Left-pads a big-endian integer of at most 32 bytes.
fn fixed32(bytes: &[u8]) -> Option<[u8; 32]> {
    if bytes.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(bytes);
    Some(out)
}

fn pcr_slot(pcr: u8) -> tss_esapi::Result<PcrSlot> {
    PcrSlot::try_from(1u32 << pcr)
}

fn pcr_selection(pcrs: &[u8]) -> tss_esapi::Result<tss_esapi::structures::PcrSelectionList> {
    let slots = pcrs
        .iter()
        .map(|&p| pcr_slot(p))
        .collect::<tss_esapi::Result<Vec<_>>>()?;
    PcrSelectionListBuilder::new()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marshalled `TPMT_PUBLIC` of a template, hex.
    fn marshalled(public: &Public) -> String {
        hex::encode(public.marshall().expect("marshal"))
    }

    #[test]
    fn srk_template_vector() {
        // docs/TPM.md, "Storage root key".
        let zeros = "00".repeat(32);
        let expected = format!(
            "0023000b000304720000000600800043001000030010\
             0020{zeros}0020{zeros}"
        );
        assert_eq!(marshalled(&srk_template().expect("template")), expected);
    }

    #[test]
    fn key_template_vectors() {
        // docs/TPM.md, "Keys": PIN-only policy.
        let policy = descriptor::policy_digest(true, &[], &[]).expect("policy");
        let policy_hex = hex::encode(policy);
        let ecdh = key_template(KeyRole::Ecdh, Some(&policy), true).expect("template");
        assert_eq!(
            marshalled(&ecdh),
            format!("0023000b000200320020{policy_hex}00100019000b0003001000000000")
        );
        let sign = key_template(KeyRole::Sign, Some(&policy), true).expect("template");
        assert_eq!(
            marshalled(&sign),
            format!("0023000b000400320020{policy_hex}00100018000b0003001000000000")
        );
        // No PIN, no PCRs: userWithAuth and noDA, empty authPolicy.
        let bare = key_template(KeyRole::Ecdh, None, false).expect("template");
        assert_eq!(
            marshalled(&bare),
            "0023000b00020472000000100019000b0003001000000000"
        );
    }
}
