//! The token's key objects: the enrolled key's reference, finding it by
//! CKA_ID, reading and parsing public points, Ed25519 signatures.

// A part of the pkcs11 module, split by concept: it shares the parent's
// imports and items.
use super::{
    Attribute, AttributeType, CkExt, Descriptor, EddsaParams, EddsaSignatureScheme, Error, Fail,
    Instead, Mechanism, Mode, ObjectClass, ObjectHandle, Res, Result, Session, ecies, failed,
};

/// How a key's public half is stored in the enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PublicForm {
    /// No public half (AES): nothing to check before login.
    None,
    /// 33-byte compressed P-256 point.
    P256,
    /// 32-byte Ed25519 key.
    Ed25519,
}

/// One key of an enrollment: where it is and what its public half must be.
pub(super) struct KeyRef<'a> {
    /// Class of the key used (private or secret key).
    pub(super) class: ObjectClass,
    pub(super) id: &'a [u8],
    pub(super) label: &'a str,
    pub(super) public: &'a [u8],
    pub(super) form: PublicForm,
    pub(super) what: &'static str,
}

impl<'a> KeyRef<'a> {
    /// The wrapping key of `d` (`public`: the enrollment's public key).
    pub(super) fn wrap(d: &'a Descriptor, public: &'a [u8]) -> Self {
        match d.mode {
            Mode::Ecdh => Self {
                class: ObjectClass::PRIVATE_KEY,
                id: &d.key_id,
                label: &d.key_label,
                public,
                form: PublicForm::P256,
                what: "P-256 private key",
            },
            Mode::AesGcm => Self {
                class: ObjectClass::SECRET_KEY,
                id: &d.key_id,
                label: &d.key_label,
                public: &[],
                form: PublicForm::None,
                what: "AES key",
            },
        }
    }

    /// The Ed25519 signing key of `d`, if one was enrolled.
    pub(super) fn ed25519(d: &'a Descriptor) -> Option<Self> {
        d.sign.as_ref().map(|k| Self {
            class: ObjectClass::PRIVATE_KEY,
            id: &k.id,
            label: &k.label,
            public: &k.public,
            form: PublicForm::Ed25519,
            what: "Ed25519 private key",
        })
    }
}

/// Pure Ed25519 (RFC 8032) on the token.
pub(super) fn ed25519_sign(session: &Session, private: ObjectHandle, msg: &[u8]) -> Res<[u8; 64]> {
    let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let sig = session
        .sign(&mechanism, private, msg)
        .map_err(|e| Fail::refused(e, "C_Sign", "CKM_EDDSA with this key", Instead::Nothing))?;
    sig.as_slice().try_into().map_err(|_| {
        Fail::Kw(failed(
            "CKM_EDDSA",
            format!("the token returned a {}-byte Ed25519 signature", sig.len()),
        ))
    })
}

pub(super) fn find(session: &Session, class: ObjectClass, id: &[u8]) -> Res<Vec<ObjectHandle>> {
    session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
        .ck("C_FindObjects")
}

pub(super) fn ambiguous(id: &[u8]) -> Fail {
    Fail::Kw(failed(
        "ambiguous key",
        format!(
            "several objects of one class share CKA_ID {}; remove the duplicates",
            hex::encode(id)
        ),
    ))
}

pub(super) fn find_one(
    session: &Session,
    class: ObjectClass,
    id: &[u8],
    what: &str,
) -> Res<ObjectHandle> {
    match find(session, class, id)?.as_slice() {
        [h] => Ok(*h),
        [] => Err(Error::WrongDevice {
            expected: format!("a {what} with CKA_ID {}", hex::encode(id)),
            found: "no such object on the token (deleted, or another token)".into(),
        }
        .into()),
        _ => Err(ambiguous(id)),
    }
}

/// Reads CKA_EC_POINT. PKCS#11 says it is a DER OCTET STRING around the
/// point (SoftHSM: 67 bytes for P-256, 34 for Ed25519); some modules return
/// the bare point, so we accept both.
pub(super) fn read_ec_point_raw(session: &Session, public: ObjectHandle) -> Res<Vec<u8>> {
    let attrs = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .ck("C_GetAttributeValue")?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| {
            Fail::Kw(failed(
                "no CKA_EC_POINT",
                "the public key object has no EC point",
            ))
        })
}

pub(super) fn read_ec_point(session: &Session, public: ObjectHandle) -> Res<p256::PublicKey> {
    parse_ec_point(&read_ec_point_raw(session, public)?).map_err(Fail::Kw)
}

/// The public key in the form the enrollment stores it.
pub(super) fn read_public(
    session: &Session,
    public: ObjectHandle,
    form: PublicForm,
) -> Res<Vec<u8>> {
    let raw = read_ec_point_raw(session, public)?;
    match form {
        PublicForm::None => Ok(Vec::new()),
        PublicForm::P256 => Ok(ecies::compress(&parse_ec_point(&raw)?).to_vec()),
        PublicForm::Ed25519 => Ok(parse_ed25519_point(&raw)?.to_vec()),
    }
}

/// The content of a DER OCTET STRING of one of `lens`, or `raw` itself.
pub(super) fn strip_octet_string<'r>(raw: &'r [u8], lens: &[usize]) -> &'r [u8] {
    match raw {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && lens.contains(&rest.len()) => {
            rest
        }
        _ => raw,
    }
}

/// Parses a P-256 CKA_EC_POINT value (DER OCTET STRING or bare SEC1).
///
/// # Errors
/// [`Error::InvalidPublicKey`].
pub fn parse_ec_point(raw: &[u8]) -> Result<p256::PublicKey> {
    ecies::parse_public_key(strip_octet_string(raw, &[65, 33]))
}

/// Parses an Ed25519 CKA_EC_POINT value (DER OCTET STRING or the bare 32
/// bytes) and checks it is a valid, not small-order, point.
///
/// # Errors
/// [`Error::InvalidPublicKey`].
pub fn parse_ed25519_point(raw: &[u8]) -> Result<[u8; 32]> {
    let bytes: [u8; 32] =
        strip_octet_string(raw, &[32])
            .try_into()
            .map_err(|_| Error::InvalidPublicKey {
                what: "an Ed25519 public key is 32 bytes",
            })?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| Error::InvalidPublicKey {
            what: "not a valid Ed25519 point",
        })?;
    if key.is_weak() {
        return Err(Error::InvalidPublicKey {
            what: "a small-order Ed25519 point",
        });
    }
    Ok(bytes)
}
