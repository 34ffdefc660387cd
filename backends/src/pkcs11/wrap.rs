//! Wrapping and unwrapping on the token: ECDH (through the shared
//! ECDH-device unwrap of keyward-kms) and AES-GCM.

// A part of the pkcs11 module, split by concept: it shares the parent's
// imports and items.
use super::{
    Attribute, AttributeType, Backend, BackendKind, Callbacks, CkError, CkExt, Descriptor, EcKdf,
    Ecdh1DeriveParams, EcdhDevice, Enrollment, Error, Fail, GcmParams, Instead, KIND, KeyRef,
    KeyType, Mechanism, ObjectClass, ObjectHandle, Res, Result, RvError, Secret32, Session,
    ToSec1Point, Token, Zeroize, descriptor, ecies, errors, failed, random_bytes, unsupported,
};

/// ECDH on the token: the x-coordinate of d·epk via CKM_ECDH1_DERIVE with
/// the null KDF, into a session object created extractable and destroyed
/// right after its value is read.
pub(super) fn token_ecdh(
    session: &Session,
    private: ObjectHandle,
    epk: &p256::PublicKey,
) -> Res<Secret32> {
    let point = epk.to_sec1_point(false);
    let params = Ecdh1DeriveParams::new(EcKdf::null(), point.as_bytes());
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let derived = session
        .derive_key(&Mechanism::Ecdh1Derive(params), private, &template)
        .map_err(|e| {
            Fail::refused(
                e,
                "C_DeriveKey",
                "CKM_ECDH1_DERIVE with the null KDF",
                Instead::AesGcm,
            )
        })?;
    let value = session.get_attributes(derived, &[AttributeType::Value]);
    // Destroyed whatever the read gave; a failure here leaves only a
    // session object, gone when the session closes.
    let _ = session.destroy_object(derived);
    let mut value = value
        .ck("C_GetAttributeValue")?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Value(v) => Some(v),
            _ => None,
        })
        .unwrap_or_default();
    let z = Secret32::try_from_slice(&value).map_err(|_| {
        Fail::Kw(failed(
            "ecdh output",
            format!(
                "the token returned {} bytes for the ECDH secret instead of 32",
                value.len()
            ),
        ))
    });
    value.zeroize();
    z
}

pub(super) fn ecdh_unwrap(
    token: &Token,
    private: ObjectHandle,
    public: &[u8],
    blob: &[u8],
    aad: &[u8],
) -> Res<Secret32> {
    // We run the token's ECDH inside ecies::open's closure; a cryptoki
    // failure is carried out through this slot so that stale sessions can
    // still be recognised and retried.
    let mut ck_failure = None;
    let result = ecies::open(public, blob, aad, |epk| {
        token
            .with_session(|s| token_ecdh(s, private, epk))
            .map_err(|f| match f {
                Fail::Kw(e) => e,
                Fail::Ck(CkError::Pkcs11(rv, function), what) => {
                    ck_failure = Some(Fail::Ck(CkError::Pkcs11(rv, function), what));
                    errors::map(CkError::Pkcs11(rv, function), what)
                }
                Fail::Ck(e, what) => errors::map(e, what),
            })
    });
    match (result, ck_failure) {
        (Ok(s), _) => Ok(s),
        (Err(_), Some(f)) => Err(f),
        (Err(e), None) => Err(Fail::Kw(e)),
    }
}

pub(super) fn aes_wrap(
    token: &Token,
    key: ObjectHandle,
    secret: &Secret32,
    aad: &[u8],
) -> Res<Vec<u8>> {
    let mut iv = [0u8; descriptor::GCM_IV_LEN];
    random_bytes(&mut iv)?;
    let sent_iv = iv;
    let ct = token.with_session(|s| {
        let params = GcmParams::new(&mut iv, aad, (8 * descriptor::GCM_TAG_LEN as u64).into())
            .ck("CK_GCM_PARAMS")?;
        s.encrypt(&Mechanism::AesGcm(params), key, secret.expose())
            .map_err(|e| Fail::refused(e, "C_Encrypt", "CKM_AES_GCM", Instead::Ecdh))
    })?;
    if iv != sent_iv || ct.len() != 32 + descriptor::GCM_TAG_LEN {
        // A module that picks its own IV or tag length would make blobs we
        // could not describe; refuse rather than store them.
        return Err(failed(
            "CKM_AES_GCM",
            "the token changed the IV or returned an unexpected length",
        )
        .into());
    }
    let mut blob = Vec::with_capacity(descriptor::AES_GCM_BLOB_LEN);
    blob.push(descriptor::AES_GCM_BLOB_VERSION);
    blob.extend_from_slice(&iv);
    blob.extend_from_slice(&ct);
    Ok(blob)
}

pub(super) fn aes_unwrap(
    token: &Token,
    key: ObjectHandle,
    blob: &[u8],
    aad: &[u8],
) -> Res<Secret32> {
    let (mut iv, ct) = descriptor::split_aes_gcm_blob(blob)?;
    token.with_session(|s| {
        let params = GcmParams::new(&mut iv, aad, (8 * descriptor::GCM_TAG_LEN as u64).into())
            .ck("CK_GCM_PARAMS")?;
        match s.decrypt(&Mechanism::AesGcm(params), key, ct) {
            Ok(mut plain) => {
                let secret = Secret32::try_from_slice(&plain).map_err(|_| Error::UnwrapFailed);
                plain.zeroize();
                Ok(secret?)
            }
            // Authentication failures are opaque, as everywhere in keyward.
            // SoftHSM 2.6 reports a GCM tag mismatch as CKR_GENERAL_ERROR
            // (OpenSSL's EVP_DecryptFinal failing); the key and session were
            // just found usable, so we read it as a failed authentication.
            Err(CkError::Pkcs11(
                RvError::GeneralError
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::FunctionFailed,
                _,
            )) => Err(Error::UnwrapFailed.into()),
            Err(e) if errors::is_mechanism_refused(&e) => {
                Err(unsupported("CKM_AES_GCM", Instead::Ecdh).into())
            }
            Err(e) => Err(Fail::Ck(e, "C_Decrypt")),
        }
    })
}

/// The backend as the shared unwrap sees it ([`ecdh_device`]), for
/// enrollments in the ecdh mode (the aes-gcm mode unwraps on the token).
pub(super) struct EcdhToken<'b>(pub(super) &'b Backend);

/// The enrolled key checked and logged in to; what is needed to find it
/// again if the token's session goes stale before the derive.
pub(super) struct TokenSession<'a> {
    pub(super) public: &'a [u8],
    pub(super) ui: &'a dyn Callbacks,
}

impl EcdhDevice for EcdhToken<'_> {
    type Params = Descriptor;
    type Session<'a>
        = TokenSession<'a>
    where
        Self: 'a;

    fn kind(&self) -> BackendKind {
        KIND
    }

    fn params(&self, enrollment: &Enrollment) -> Result<Descriptor> {
        Descriptor::from_enrollment(enrollment)
    }

    fn open_session<'a>(
        &'a self,
        enrollment: &'a Enrollment,
        d: &'a Descriptor,
        ui: &'a dyn Callbacks,
    ) -> Result<TokenSession<'a>> {
        let public = enrollment.public_key.as_slice();
        self.0.with_token(d, |token| {
            Backend::ready_key(token, d, &KeyRef::wrap(d, public), ui).map(|_| ())
        })?;
        Ok(TokenSession { public, ui })
    }

    fn ecdh(
        &self,
        session: &mut TokenSession<'_>,
        d: &Descriptor,
        peer: &p256::PublicKey,
    ) -> Result<Secret32> {
        // The key is cached from open_session; a stale session (token
        // removed and re-inserted) is looked up, and logged in to, again.
        self.0.with_token(d, |token| {
            let key = Backend::ready_key(token, d, &KeyRef::wrap(d, session.public), session.ui)?;
            token.with_session(|s| token_ecdh(s, key, peer))
        })
    }
}
