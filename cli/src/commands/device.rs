//! `sign --protector ID` and `export-public --protector ID`: signatures by
//! the key inside a hardware protector's device (the TPM's ECDSA key, a
//! PKCS#11 token's P-256 or Ed25519 key, the YubiKey's P-256 slot key), checkable with standard tools:
//!
//! ```text
//! keyward export-public --protector 2 > device.pem
//! keyward sign --protector 2 -i message -o message.sig
//! openssl dgst -sha256 -verify device.pem -signature message.sig message
//! ```
//!
//! Neither needs the keystore unlocked: the descriptor holds the public key
//! and the device asks for its own PIN.

use std::io::{Read, Write};

use base64::Engine as _;
use keyward_kms::{Enrollment, Error, SignAlgorithm};
use p256::pkcs8::EncodePublicKey as _;
use serde_json::json;

use super::Ctx;
use crate::args::{ExportPublicArgs, SignArgs};
use crate::failure::{Exit, Failure};
use crate::files::{Content, Input, Output, print, print_json};

/// Largest message `sign --protector` reads: the device APIs take the whole
/// message (Ed25519 hashes on the token), so it is held in memory.
const MAX_MESSAGE_LEN: u64 = 64 * 1024 * 1024;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4): SEQUENCE {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING { 0 unused bits, key } }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The protector `--protector` names, for a command that has no other way
/// to name a key.
fn protector_id(ctx: &Ctx<'_>, command: &str, key: &str) -> Result<u32, Failure> {
    ctx.cli.protector.ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            format!(
                "{command} needs {key} (a keyward signing key) or --protector ID (a device key)"
            ),
        )
        .hint(
            "`keyward key list` shows the signing keys, `keyward protectors list` the \
             protectors",
        )
    })
}

/// The enrollment of hardware protector `id`.
fn device_enrollment(
    ctx: &Ctx<'_>,
    service: &keyward_kms::Service,
    id: u32,
) -> Result<Enrollment, Failure> {
    let enrollment = ctx.check(service.enrollment(id))?;
    if !enrollment.kind.is_hardware() {
        return Err(Failure::new(
            Exit::Usage,
            format!(
                "protector {id} is a {} protector, which has no device key to sign with",
                enrollment.kind
            ),
        )
        .hint(
            "give the id of a tpm, pkcs11 or yubikey protector (`keyward protectors list`), or sign \
             with a keyward signing key: `keyward sign --key NAME`",
        ));
    }
    Ok(enrollment)
}

/// `keyward sign --protector ID`.
pub(super) fn sign(ctx: &Ctx<'_>, args: &SignArgs) -> Result<(), Failure> {
    let id = protector_id(ctx, "sign", "--key NAME")?;
    if args.audience.is_some() {
        return Err(Failure::new(
            Exit::Usage,
            "--audience applies to keyward signing keys (--key NAME), not to device signatures",
        ));
    }
    let mut input = Input::open(args.input.as_deref())?;
    let mut output = Output::create(args.output.as_deref(), Content::Binary, args.force)?;
    let service = ctx.open()?;
    let enrollment = device_enrollment(ctx, &service, id)?;
    let kind = enrollment.kind;
    let backends = ctx.hardware.backends();
    let backend = backends.get(kind).ok_or_else(|| {
        crate::failure::from_kms_for(
            &Error::NotSupported {
                kind: kind.to_string(),
                what: "protectors of this kind in this build of keyward",
            },
            Some(kind),
        )
    })?;
    let mut message = Vec::new();
    (&mut input)
        .take(MAX_MESSAGE_LEN + 1)
        .read_to_end(&mut message)
        .map_err(|e| Failure::io("cannot read the message", &e))?;
    if message.len() as u64 > MAX_MESSAGE_LEN {
        return Err(Failure::new(
            Exit::Usage,
            "the message is larger than 64 MiB, the most a device signature covers here",
        )
        .hint("sign its SHA-256 digest instead (e.g. `sha256sum FILE`), or use --key NAME"));
    }
    let signature = backend
        .sign(&enrollment, &message, &ctx.ui)
        .map_err(|e| ctx.ui.explain_for(&e, Some(kind)))?;
    tracing::info!(protector = id, %kind, algorithm = ?signature.algorithm, "device signature");
    output
        .write_all(&signature.bytes)
        .map_err(|e| Failure::io("cannot write the signature", &e))?;
    output.commit()
}

/// The key a device protector signs with.
struct SigningKey {
    algorithm: SignAlgorithm,
    /// SubjectPublicKeyInfo, PEM.
    pem: String,
    /// SEC1 compressed point (P-256) or the 32-byte key (Ed25519).
    raw: Vec<u8>,
}

#[cfg_attr(
    not(any(feature = "tpm", feature = "pkcs11", feature = "yubikey")),
    allow(dead_code, reason = "only the hardware backends sign with P-256 here")
)]
fn p256_key(public: &p256::PublicKey) -> Result<SigningKey, Failure> {
    let pem = public
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|_| {
            Failure::from(Error::InvalidPublicKey {
                what: "cannot encode as SubjectPublicKeyInfo",
            })
        })?;
    Ok(SigningKey {
        algorithm: SignAlgorithm::EcdsaP256Sha256,
        pem,
        raw: keyward_kms::crypto::ecies::compress(public).to_vec(),
    })
}

#[cfg_attr(
    not(feature = "pkcs11"),
    allow(dead_code, reason = "only PKCS#11 tokens sign with Ed25519 here")
)]
fn ed25519_key(public: &[u8]) -> SigningKey {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    let body = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    // 60 base64 characters: one line, under PEM's 64.
    pem.push_str(&body);
    pem.push_str("\n-----END PUBLIC KEY-----\n");
    SigningKey {
        algorithm: SignAlgorithm::Ed25519,
        pem,
        raw: public.to_vec(),
    }
}

/// The public key protector `id`'s device signs with.
fn signing_key(id: u32, enrollment: &Enrollment) -> Result<SigningKey, Failure> {
    match enrollment.kind {
        #[cfg(feature = "tpm")]
        keyward_kms::BackendKind::Tpm => {
            let public = keyward_backends::tpm::Backend::signing_public_key(enrollment)?;
            p256_key(&public)
        }
        #[cfg(feature = "pkcs11")]
        keyward_kms::BackendKind::Pkcs11 => {
            use keyward_backends::pkcs11::{Descriptor, Mode};
            let descriptor = Descriptor::from_enrollment(enrollment)?;
            if let Some(key) = &descriptor.sign {
                return Ok(ed25519_key(&key.public));
            }
            if descriptor.mode != Mode::Ecdh {
                return Err(Failure::new(
                    Exit::Usage,
                    format!("protector {id} (pkcs11, aes-gcm mode) has no key to sign with"),
                )
                .hint(
                    "enroll the token with --mode ecdh, or add an Ed25519 key with --sign \
                     ed25519",
                ));
            }
            p256_key(&keyward_kms::crypto::ecies::parse_public_key(
                &enrollment.public_key,
            )?)
        }
        #[cfg(feature = "yubikey")]
        keyward_kms::BackendKind::Yubikey => p256_key(
            &keyward_kms::crypto::ecies::parse_public_key(&enrollment.public_key)?,
        ),
        kind => {
            tracing::debug!(protector = id, %kind, "no device signing key in this build");
            Err(crate::failure::from_kms_for(
                &Error::NotSupported {
                    kind: kind.to_string(),
                    what: "protectors of this kind in this build of keyward",
                },
                Some(kind),
            ))
        }
    }
}

/// `keyward export-public --protector ID`.
pub(super) fn export_public(ctx: &Ctx<'_>, args: &ExportPublicArgs) -> Result<(), Failure> {
    let id = protector_id(ctx, "export-public", "a key NAME")?;
    if args.version.is_some() {
        return Err(Failure::new(
            Exit::Usage,
            "--version applies to keyward signing keys (NAME), not to device keys",
        ));
    }
    let service = ctx.open()?;
    let enrollment = device_enrollment(ctx, &service, id)?;
    let key = signing_key(id, &enrollment)?;
    if ctx.json() {
        return print_json(&json!({
            "protector": id,
            "kind": enrollment.kind,
            "algorithm": key.algorithm,
            "pem": key.pem,
            "raw_hex": hex::encode(&key.raw),
        }));
    }
    print(&key.pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_pem_is_rfc8410() {
        // RFC 8410 §10.1's example public key.
        let public =
            hex::decode("19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1")
                .expect("hex");
        let key = ed25519_key(&public);
        assert_eq!(
            key.pem,
            "-----BEGIN PUBLIC KEY-----\n\
             MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
             -----END PUBLIC KEY-----\n"
        );
        assert_eq!(key.algorithm, SignAlgorithm::Ed25519);
    }
}
