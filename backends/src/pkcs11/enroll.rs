//! Enrollment: choosing the token and its mode, generating or adopting
//! the keys, and the self-test before the descriptor is returned.

// A part of the pkcs11 module, split by concept: it shares the parent's
// imports and items.
use super::{
    Attribute, AttributeType, Backend, BackendKind, Callbacks, CkExt, Descriptor, ED25519_PARAMS,
    EnrollRequest, Enrollment, Error, Fail, Instead, KEY_ID_LEN, KeyRef, KeyType, Mechanism,
    MechanismType, Mode, Notice, ObjectClass, ObjectHandle, P256_PARAMS, PublicForm, Res, Result,
    Secret32, Session, SignKey, Token, Uri, aes_unwrap, aes_wrap, ambiguous, ecdh_unwrap, ecies,
    ed25519_sign, errors, failed, find, find_one, library, random_bytes, read_ec_point,
    read_public, select_token, unsupported, uri,
};
use keyward_kms::backend::options::Pkcs11Sign;

impl Backend {
    pub(super) fn enroll_inner(
        &self,
        req: &EnrollRequest,
        ui: &dyn Callbacks,
    ) -> Result<Enrollment> {
        let options = req.options.pkcs11()?;
        let ed25519 = options.sign == Some(Pkcs11Sign::Ed25519);
        let uri = match req.device.as_deref() {
            Some(s) => Uri::parse(s)?,
            None => Uri::default(),
        };
        let module = self.enroll_module(&uri)?;
        let lib = library::load(&module)?;
        let (slot, info) = select_token(&lib, &uri)?;
        let label = info.label().trim_end().to_owned();
        let serial = info.serial_number().trim_end().to_owned();
        if serial.is_empty() {
            return Err(failed(
                "no serial",
                format!(
                    "token \"{label}\" reports no serial number; keyward needs one to tell tokens apart"
                ),
            ));
        }
        let mechanisms = lib
            .get_mechanism_list(slot)
            .map_err(|e| errors::map(e, "listing mechanisms"))?;
        let has = |m: MechanismType| mechanisms.contains(&m);
        let ecdh_ok = has(MechanismType::ECDH1_DERIVE) && has(MechanismType::ECC_KEY_PAIR_GEN);
        let gcm_ok = has(MechanismType::AES_GCM) && has(MechanismType::AES_KEY_GEN);
        let mode = match options.mode {
            Some(m) => m,
            None => match (self.options.mode, uri.object_type) {
                (Some(m), _) => m,
                (None, Some(uri::ObjectType::SecretKey)) => Mode::AesGcm,
                (None, Some(uri::ObjectType::Private | uri::ObjectType::Public)) => Mode::Ecdh,
                (None, _) if ecdh_ok => Mode::Ecdh,
                (None, _) => Mode::AesGcm,
            },
        };
        if let Some(forced) = self.options.mode {
            if forced != mode {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "this pkcs11 backend is configured for mode {}",
                        forced.as_str()
                    ),
                });
            }
        }
        match mode {
            Mode::Ecdh if !ecdh_ok => {
                return Err(unsupported(
                    "CKM_EC_KEY_PAIR_GEN + CKM_ECDH1_DERIVE (the ecdh mode)",
                    Instead::AesGcm,
                ));
            }
            Mode::AesGcm if !gcm_ok => {
                return Err(unsupported(
                    "CKM_AES_KEY_GEN + CKM_AES_GCM (the aes-gcm mode)",
                    Instead::Ecdh,
                ));
            }
            _ => {}
        }
        if ed25519 && !(has(MechanismType::ECC_EDWARDS_KEY_PAIR_GEN) && has(MechanismType::EDDSA)) {
            return Err(unsupported(
                "CKM_EC_EDWARDS_KEY_PAIR_GEN + CKM_EDDSA",
                Instead::NoEd25519,
            ));
        }
        if mode == Mode::AesGcm && options.sign == Some(Pkcs11Sign::Ecdsa) {
            return Err(Error::InvalidArgument {
                what: "sign=ecdsa needs mode=ecdh (its P-256 key signs); use sign=ed25519 \
                       with aes-gcm"
                    .into(),
            });
        }
        match (mode, uri.object_type) {
            (
                Mode::Ecdh,
                Some(uri::ObjectType::SecretKey | uri::ObjectType::Cert | uri::ObjectType::Data),
            )
            | (
                Mode::AesGcm,
                Some(
                    uri::ObjectType::Private
                    | uri::ObjectType::Public
                    | uri::ObjectType::Cert
                    | uri::ObjectType::Data,
                ),
            ) => {
                return Err(Error::InvalidArgument {
                    what: format!("the URI's type= does not fit mode {}", mode.as_str()),
                });
            }
            _ => {}
        }

        let token = self.token(&lib, &module, slot, &label, &serial);
        // Objects this enrollment created, destroyed again if it fails.
        let mut created: Vec<ObjectHandle> = Vec::new();
        let result = (|| -> Res<(Descriptor, Vec<u8>)> {
            token.login(ui, uri.pin_source.as_deref())?;
            let session = lib.open_rw_session(slot).ck("C_OpenSession")?;
            let (key, fresh) = match mode {
                Mode::Ecdh => ec_key(&session, &uri, &req.label)?,
                Mode::AesGcm => aes_key(&session, &uri, &req.label, ui)?,
            };
            if fresh {
                created.extend(&key.handles);
            }
            let sign = if ed25519 {
                let (sign, handles) = ed25519_key(&session, &req.label)?;
                created.extend(handles);
                Some(sign)
            } else {
                None
            };
            let descriptor = Descriptor {
                sign,
                mode,
                token_label: label.clone(),
                token_serial: serial.clone(),
                manufacturer: info.manufacturer_id().trim_end().to_owned(),
                model: info.model().trim_end().to_owned(),
                key_id: key.id.clone(),
                key_label: key.label.clone(),
                module: Some(module.clone()),
            };
            // Self-test before anything is stored: a token that lists a
            // mechanism but cannot do it with this key (or with the null
            // KDF) must fail now, not at the next unlock.
            Self::self_test(&token, &descriptor, &key.public)?;
            Ok((descriptor, key.public))
        })();
        let (descriptor, public_key) = match result {
            Ok(v) => v,
            Err(f) => {
                if !created.is_empty() {
                    if let Ok(session) = lib.open_rw_session(slot) {
                        for h in created {
                            let _ = session.destroy_object(h);
                        }
                    }
                }
                return Err(f.into_error());
            }
        };
        tracing::info!(token = %descriptor.device_id(), mode = mode.as_str(), "pkcs11 enrolled");
        Ok(Enrollment {
            kind: BackendKind::Pkcs11,
            device_id: Some(descriptor.device_id()),
            public_key,
            params: descriptor.to_json(),
        })
    }

    pub(super) fn self_test(token: &Token, d: &Descriptor, public: &[u8]) -> Res<()> {
        let secret = Secret32::random()?;
        let aad = b"keyward/v1/pkcs11-self-test";
        let key = token.key(&KeyRef::wrap(d, public))?;
        let back = match d.mode {
            Mode::Ecdh => {
                let blob = ecies::seal(public, &secret, aad)?;
                ecdh_unwrap(token, key, public, &blob, aad)?
            }
            Mode::AesGcm => {
                let blob = aes_wrap(token, key, &secret, aad)?;
                aes_unwrap(token, key, &blob, aad)?
            }
        };
        if back.expose() != secret.expose() {
            return Err(failed(
                "self-test",
                format!(
                    "{} returned a different secret than it was given in the enrollment \
                     self-test; the token is not usable in {} mode",
                    token.identity(),
                    d.mode.as_str()
                ),
            )
            .into());
        }
        if let Some(sign_key) = KeyRef::ed25519(d) {
            let handle = token.key(&sign_key)?;
            let msg = b"keyward/v1/pkcs11-self-test ed25519";
            let sig = token.with_session(|s| ed25519_sign(s, handle, msg))?;
            let public: [u8; 32] = sign_key.public.try_into().map_err(|_| {
                Fail::Kw(Error::InvalidPublicKey {
                    what: "an Ed25519 public key is 32 bytes",
                })
            })?;
            let ok = ed25519_dalek::VerifyingKey::from_bytes(&public).is_ok_and(|vk| {
                vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig))
                    .is_ok()
            });
            if !ok {
                return Err(failed(
                    "self-test",
                    format!(
                        "the Ed25519 signature of {} does not verify with its public key",
                        token.identity()
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// Checks, without a PIN, that the key's public half is on the token and
    /// is the enrolled one (keys without a public half are checked after
    /// login, by being found).
    pub(super) fn check_key(token: &Token, d: &Descriptor, key: &KeyRef<'_>) -> Res<()> {
        if key.form == PublicForm::None {
            return Ok(());
        }
        let found = token.with_session(|s| {
            let handles = find(s, ObjectClass::PUBLIC_KEY, key.id)?;
            match handles.as_slice() {
                [] => Ok(None),
                [h] => read_public(s, *h, key.form).map(Some),
                _ => Err(ambiguous(key.id)),
            }
        })?;
        let Some(public) = found else {
            return Err(Error::WrongDevice {
                expected: format!("{} with key \"{}\"", d.device_id(), key.label),
                found: format!(
                    "{} without a public key of CKA_ID {}",
                    token.identity(),
                    hex::encode(key.id)
                ),
            }
            .into());
        };
        if public != key.public {
            return Err(Error::WrongDevice {
                expected: format!(
                    "{} with public key {}",
                    d.device_id(),
                    hex::encode(key.public)
                ),
                found: format!("public key {}", hex::encode(public)),
            }
            .into());
        }
        Ok(())
    }
}

/// A key chosen or created at enrollment.
pub(super) struct EnrolledKey {
    pub(super) id: Vec<u8>,
    pub(super) label: String,
    /// SEC1 public key (ecdh) or empty.
    pub(super) public: Vec<u8>,
    /// Objects to destroy if enrollment fails after creating them.
    pub(super) handles: Vec<ObjectHandle>,
}

pub(super) fn new_key_id_and_label(uri: &Uri, label: &str) -> Res<(Vec<u8>, String)> {
    let id = match &uri.id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let mut id = vec![0u8; KEY_ID_LEN];
            random_bytes(&mut id)?;
            id
        }
    };
    let label = uri.object.clone().unwrap_or_else(|| {
        if label.is_empty() {
            "keyward".to_owned()
        } else {
            format!("keyward {label}")
        }
    });
    Ok((id, label))
}

/// Selector template for a key named by the URI.
pub(super) fn uri_template(class: ObjectClass, uri: &Uri) -> Vec<Attribute> {
    let mut t = vec![Attribute::Class(class)];
    if let Some(id) = &uri.id {
        t.push(Attribute::Id(id.clone()));
    }
    if let Some(label) = &uri.object {
        t.push(Attribute::Label(label.as_bytes().to_vec()));
    }
    t
}

/// The EC key pair named by the URI, or a new one.
pub(super) fn ec_key(session: &Session, uri: &Uri, label: &str) -> Res<(EnrolledKey, bool)> {
    if uri.names_object() {
        let found = session
            .find_objects(&uri_template(ObjectClass::PRIVATE_KEY, uri))
            .ck("C_FindObjects")?;
        match found.as_slice() {
            [] => {}
            [private] => return existing_ec_key(session, *private).map(|k| (k, false)),
            _ => {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "{} private keys match the URI; add id= to choose one",
                        found.len()
                    ),
                }
                .into());
            }
        }
    }
    let (id, label) = new_key_id_and_label(uri, label)?;
    let (public, private) = generate_key_pair(
        session,
        &KeyPairSpec {
            mechanism: Mechanism::EccKeyPairGen,
            params: &P256_PARAMS,
            derive: true,
            id: &id,
            label: &label,
            what: "P-256 key generation (CKM_EC_KEY_PAIR_GEN)",
            instead: Instead::AesGcm,
        },
    )?;
    let point = read_ec_point(session, public)?;
    Ok((
        EnrolledKey {
            id,
            label,
            public: ecies::compress(&point).to_vec(),
            handles: vec![public, private],
        },
        true,
    ))
}

pub(super) fn existing_ec_key(session: &Session, private: ObjectHandle) -> Res<EnrolledKey> {
    let attrs = session
        .get_attributes(
            private,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::EcParams,
                AttributeType::Derive,
            ],
        )
        .ck("C_GetAttributeValue")?;
    let mut id = Vec::new();
    let mut label = String::new();
    let mut params = Vec::new();
    let mut key_type = None;
    let mut derive = false;
    for a in attrs {
        match a {
            Attribute::KeyType(k) => key_type = Some(k),
            Attribute::Id(v) => id = v,
            Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::EcParams(v) => params = v,
            Attribute::Derive(b) => derive = b,
            _ => {}
        }
    }
    let wrong = |why: &str| {
        Fail::Kw(failed(
            "wrong key",
            format!("the key the URI names cannot be used in ecdh mode: {why}"),
        ))
    };
    if key_type != Some(KeyType::EC) {
        return Err(wrong("it is not an EC key"));
    }
    if params != P256_PARAMS {
        return Err(wrong("it is not on the P-256 curve"));
    }
    if !derive {
        return Err(wrong("it does not allow derivation (CKA_DERIVE is false)"));
    }
    if id.is_empty() {
        return Err(wrong(
            "it has no CKA_ID, which keyward needs to find it again",
        ));
    }
    let public = find_one(session, ObjectClass::PUBLIC_KEY, &id, "public key")?;
    let point = read_ec_point(session, public)?;
    Ok(EnrolledKey {
        id,
        label,
        public: ecies::compress(&point).to_vec(),
        handles: Vec::new(),
    })
}

/// The AES key named by the URI, or a new AES-256 key.
pub(super) fn aes_key(
    session: &Session,
    uri: &Uri,
    label: &str,
    ui: &dyn Callbacks,
) -> Res<(EnrolledKey, bool)> {
    if uri.names_object() {
        let found = session
            .find_objects(&uri_template(ObjectClass::SECRET_KEY, uri))
            .ck("C_FindObjects")?;
        match found.as_slice() {
            [] => {}
            [key] => return existing_aes_key(session, *key, ui).map(|k| (k, false)),
            _ => {
                return Err(Error::InvalidArgument {
                    what: format!(
                        "{} secret keys match the URI; add id= to choose one",
                        found.len()
                    ),
                }
                .into());
            }
        }
    }
    let (id, label) = new_key_id_and_label(uri, label)?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Id(id.clone()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    let handle = session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| {
            Fail::refused(
                e,
                "C_GenerateKey",
                "AES-256 key generation (CKM_AES_KEY_GEN)",
                Instead::Ecdh,
            )
        })?;
    Ok((
        EnrolledKey {
            id,
            label,
            public: Vec::new(),
            handles: vec![handle],
        },
        true,
    ))
}

pub(super) fn existing_aes_key(
    session: &Session,
    key: ObjectHandle,
    ui: &dyn Callbacks,
) -> Res<EnrolledKey> {
    // Attributes only; never CKA_VALUE.
    let attrs = session
        .get_attributes(
            key,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::ValueLen,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Extractable,
            ],
        )
        .ck("C_GetAttributeValue")?;
    let mut id = Vec::new();
    let mut label = String::new();
    let mut key_type = None;
    let mut len = 0u64;
    let (mut encrypt, mut decrypt, mut extractable) = (false, false, false);
    for a in attrs {
        match a {
            Attribute::KeyType(k) => key_type = Some(k),
            Attribute::Id(v) => id = v,
            Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::ValueLen(n) => len = n.into(),
            Attribute::Encrypt(b) => encrypt = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Extractable(b) => extractable = b,
            _ => {}
        }
    }
    let wrong = |why: &str| {
        Fail::Kw(failed(
            "wrong key",
            format!("the key the URI names cannot be used in aes-gcm mode: {why}"),
        ))
    };
    if key_type != Some(KeyType::AES) || len != 32 {
        return Err(wrong("it is not an AES-256 key"));
    }
    if !encrypt || !decrypt {
        return Err(wrong("it does not allow both encryption and decryption"));
    }
    if id.is_empty() {
        return Err(wrong(
            "it has no CKA_ID, which keyward needs to find it again",
        ));
    }
    if extractable {
        ui.notify(&Notice::Info(
            "warning: the AES key is extractable (CKA_EXTRACTABLE): it can leave the token",
        ));
    }
    Ok(EnrolledKey {
        id,
        label,
        public: Vec::new(),
        handles: Vec::new(),
    })
}

/// A new Ed25519 key pair for signing, with its own random CKA_ID.
pub(super) fn ed25519_key(session: &Session, label: &str) -> Res<(SignKey, Vec<ObjectHandle>)> {
    let mut id = vec![0u8; KEY_ID_LEN];
    random_bytes(&mut id)?;
    let label = if label.is_empty() {
        "keyward ed25519".to_owned()
    } else {
        format!("keyward {label} ed25519")
    };
    let (public, private) = generate_key_pair(
        session,
        &KeyPairSpec {
            mechanism: Mechanism::EccEdwardsKeyPairGen,
            params: &ED25519_PARAMS,
            derive: false,
            id: &id,
            label: &label,
            what: "Ed25519 key generation (CKM_EC_EDWARDS_KEY_PAIR_GEN)",
            instead: Instead::NoEd25519,
        },
    )?;
    let point = read_public(session, public, PublicForm::Ed25519)?;
    Ok((
        SignKey {
            id,
            label,
            public: point,
        },
        vec![public, private],
    ))
}

/// What [`generate_key_pair`] makes: a token key pair whose private half is
/// sensitive and never extractable, both halves under one id and label.
struct KeyPairSpec<'a> {
    mechanism: Mechanism<'static>,
    /// DER of the curve (`CKA_EC_PARAMS`).
    params: &'static [u8],
    /// The private key may derive (ECDH), besides signing.
    derive: bool,
    id: &'a [u8],
    label: &'a str,
    /// The mechanism as the "not supported" error names it.
    what: &'static str,
    /// What to use instead when the token refuses the mechanism.
    instead: Instead,
}

/// Generates the key pair `spec` describes; returns the public and the
/// private handle.
fn generate_key_pair(
    session: &Session,
    spec: &KeyPairSpec<'_>,
) -> Res<(ObjectHandle, ObjectHandle)> {
    let public_template = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(spec.params.to_vec()),
        Attribute::Id(spec.id.to_vec()),
        Attribute::Label(spec.label.as_bytes().to_vec()),
    ];
    let mut private_template = vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ];
    if spec.derive {
        private_template.push(Attribute::Derive(true));
    }
    private_template.extend([
        Attribute::Sign(true),
        Attribute::Id(spec.id.to_vec()),
        Attribute::Label(spec.label.as_bytes().to_vec()),
    ]);
    session
        .generate_key_pair(&spec.mechanism, &public_template, &private_template)
        .map_err(|e| Fail::refused(e, "C_GenerateKeyPair", spec.what, spec.instead))
}
