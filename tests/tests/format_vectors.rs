//! Checks the test vectors of docs/FORMAT.md byte for byte against the code,
//! in both directions: encrypting, wrapping or signing the vector's inputs
//! gives exactly its output, and decrypting, unwrapping or verifying the
//! output gives back the inputs.
//!
//! The vectors are fenced blocks in the document:
//!
//! ````text
//! ```vector NAME
//! field: hex
//!     more hex (a continuation line starts with whitespace)
//! ```
//! ````

use std::collections::BTreeMap;
use std::path::PathBuf;

use keyward_kms::crypto::{ecdsa, ecies, envelope, kw, signing, stream};
use keyward_kms::{DataClass, Error, KeyName, KeyPurpose, Secret32};
use p256::ecdsa::signature::Signer;

/// The vectors this file checks; each must be in the document.
const CHECKED: [&str; 7] = [
    "oneshot",
    "stream-3-chunks",
    "stream-empty",
    "dek-wrap",
    "ecies",
    "signed-message",
    "ecdsa-p256",
];

struct Vector {
    name: String,
    fields: BTreeMap<String, Vec<u8>>,
}

impl Vector {
    fn get(&self, field: &str) -> &[u8] {
        self.fields
            .get(field)
            .unwrap_or_else(|| panic!("vector {}: no field {field:?}", self.name))
    }

    fn secret(&self, field: &str) -> Secret32 {
        Secret32::try_from_slice(self.get(field))
            .unwrap_or_else(|e| panic!("vector {}: {field}: {e}", self.name))
    }

    fn name_field(&self) -> KeyName {
        KeyName::new(std::str::from_utf8(self.get("name")).expect("ASCII name"))
            .expect("valid key name")
    }

    fn u32(&self, field: &str) -> u32 {
        u32::from_be_bytes(self.get(field).try_into().expect("4 bytes"))
    }

    fn u64(&self, field: &str) -> u64 {
        u64::from_be_bytes(self.get(field).try_into().expect("8 bytes"))
    }

    fn byte(&self, field: &str) -> u8 {
        let [b] = self.get(field) else {
            panic!("vector {}: {field} is not one byte", self.name)
        };
        *b
    }

    fn class(&self) -> DataClass {
        DataClass::from_code(self.byte("class")).expect("class code")
    }

    fn array<const N: usize>(&self, field: &str) -> [u8; N] {
        self.get(field)
            .try_into()
            .unwrap_or_else(|_| panic!("vector {}: {field} is not {N} bytes", self.name))
    }
}

fn parse(doc: &str) -> Vec<Vector> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```vector ") else {
            continue;
        };
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in lines.by_ref() {
            if line.trim_end() == "```" {
                break;
            }
            if line.starts_with(char::is_whitespace) {
                let (_, value) = fields.last_mut().expect("continuation after a field");
                value.push_str(line.trim());
            } else {
                let (field, value) = line.split_once(':').expect("`field: hex` line");
                fields.push((field.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let mut map = BTreeMap::new();
        for (field, value) in fields {
            let bytes = hex::decode(&value)
                .unwrap_or_else(|e| panic!("vector {name}: field {field}: bad hex: {e}"));
            assert!(
                map.insert(field.clone(), bytes).is_none(),
                "vector {name}: duplicate field {field}"
            );
        }
        out.push(Vector {
            name: name.trim().to_owned(),
            fields: map,
        });
    }
    out
}

fn check_oneshot(v: &Vector) {
    let key = v.secret("key");
    let (name, version, class) = (v.name_field(), v.u32("version"), v.class());
    let (context, plaintext, expected) =
        (v.get("context"), v.get("plaintext"), v.get("ciphertext"));
    let ct = envelope::seal_with_nonce(
        &key,
        &name,
        version,
        class,
        context,
        plaintext,
        v.array("nonce"),
    )
    .expect("seal");
    assert_eq!(
        hex::encode(&ct),
        hex::encode(expected),
        "oneshot ciphertext"
    );

    let (header, len) = envelope::parse_header(expected).expect("header");
    assert_eq!(&expected[..len], v.get("header"));
    assert_eq!(header.mode, envelope::Mode::OneShot);
    assert_eq!((header.key, header.version), (name, version));
    let mut aad = v.get("header").to_vec();
    aad.push(class.code());
    aad.extend_from_slice(context);
    assert_eq!(aad, v.get("aad"), "AAD = header | class | context");

    let pt = envelope::open(&key, class, context, expected).expect("open");
    assert_eq!(pt.expose(), plaintext);
    let mut bad = expected.to_vec();
    *bad.last_mut().expect("non-empty") ^= 1;
    assert!(matches!(
        envelope::open(&key, class, context, &bad),
        Err(Error::DecryptionFailed)
    ));
}

fn check_stream(v: &Vector) {
    let key = v.secret("key");
    let (name, version, class) = (v.name_field(), v.u32("version"), v.class());
    let (context, plaintext, expected) =
        (v.get("context"), v.get("plaintext"), v.get("ciphertext"));
    let mut ct = Vec::new();
    let n = stream::encrypt_with_params(
        &key,
        &name,
        version,
        class,
        context,
        v.byte("chunk_exp"),
        v.array("salt"),
        &mut &plaintext[..],
        &mut ct,
        &mut |_| {},
    )
    .expect("encrypt");
    assert_eq!(n, plaintext.len() as u64);
    assert_eq!(
        hex::encode(&ct),
        hex::encode(expected),
        "{} ciphertext",
        v.name
    );

    let mut reader = expected;
    let (header, raw) = stream::read_header(&mut reader).expect("header");
    assert_eq!(header.mode, envelope::Mode::Stream);
    assert_eq!((header.key, header.version), (name, version));
    let stream_header = &expected[..raw.len() + 1 + stream::SALT_LEN];
    let stream_key = stream::stream_key(&key, stream_header, class, context);
    assert_eq!(
        stream_key.expose()[..],
        v.get("stream_key")[..],
        "{} stream key",
        v.name
    );

    let mut out = Vec::new();
    let n = stream::decrypt(
        &key,
        class,
        context,
        &raw,
        &mut reader,
        &mut out,
        &mut |_| {},
    )
    .expect("decrypt");
    assert_eq!(n, plaintext.len() as u64);
    assert_eq!(out, plaintext);
    let mut reader = &expected[..expected.len() - 1];
    let (_, raw) = stream::read_header(&mut reader).expect("header");
    assert!(
        stream::decrypt(
            &key,
            class,
            context,
            &raw,
            &mut reader,
            &mut Vec::new(),
            &mut |_| {}
        )
        .is_err()
    );
}

fn check_dek_wrap(v: &Vector) {
    let master = v.secret("master");
    let store_id: [u8; 16] = v.array("store_id");
    let name = v.name_field();
    let purpose = match v.byte("purpose") {
        1 => KeyPurpose::Encrypt,
        2 => KeyPurpose::Sign,
        other => panic!("purpose code {other}"),
    };
    assert_eq!(purpose.code(), v.byte("purpose"));
    let label = kw::DekLabel {
        store_id: &store_id,
        name: &name,
        version: v.u32("version"),
        purpose,
        class: v.class(),
    };
    let kek = kw::dek_kek(&master, &label);
    assert_eq!(kek.expose()[..], v.get("kek")[..], "dek-wrap KEK");
    let wrapped = kw::wrap(&kek, &v.secret("key"));
    assert_eq!(
        hex::encode(wrapped),
        hex::encode(v.get("wrapped")),
        "dek-wrap blob"
    );
    let key = kw::unwrap(&kek, v.get("wrapped")).expect("unwrap");
    assert_eq!(key.expose()[..], v.get("key")[..]);
    assert!(kw::unwrap(&master, v.get("wrapped")).is_err());
}

fn check_ecies(v: &Vector) {
    let recipient = p256::SecretKey::from_slice(v.get("recipient_private")).expect("scalar");
    let public = ecies::compress(&recipient.public_key());
    assert_eq!(public[..], v.get("recipient_public")[..]);
    let ephemeral = p256::SecretKey::from_slice(v.get("ephemeral_private")).expect("scalar");
    let (aad, expected) = (v.get("aad"), v.get("blob"));
    let blob =
        ecies::seal_with_ephemeral(&public, &v.secret("secret"), aad, &ephemeral).expect("seal");
    assert_eq!(hex::encode(&blob), hex::encode(expected), "ecies blob");
    assert_eq!(expected.len(), ecies::BLOB_LEN);
    let secret = ecies::open(&public, expected, aad, |epk| {
        Ok(ecies::ecdh(&recipient, epk))
    })
    .expect("open");
    assert_eq!(secret.expose()[..], v.get("secret")[..]);
    assert!(
        ecies::open(&public, expected, b"other aad", |epk| Ok(ecies::ecdh(
            &recipient, epk
        )))
        .is_err()
    );
}

fn check_signed_message(v: &Vector) {
    let seed = v.secret("seed");
    let public = signing::public_key(&seed);
    assert_eq!(public[..], v.get("public_key")[..]);
    let header = signing::SignedHeader {
        key: v.name_field(),
        version: v.u32("version"),
        signer: v.array("signer"),
        counter: v.u64("counter"),
        timestamp: v.u64("timestamp"),
        audience: String::from_utf8(v.get("audience").to_vec()).expect("UTF-8 audience"),
    };
    let (message, expected) = (v.get("message"), v.get("blob"));
    let blob = signing::sign(&seed, &header, &mut &message[..]).expect("sign");
    assert_eq!(
        hex::encode(&blob),
        hex::encode(expected),
        "signed-message blob"
    );
    assert_eq!(signing::parse(expected).expect("parse"), header);
    let verified = signing::verify(&public, expected, &mut &message[..]).expect("verify");
    assert_eq!(verified, header);
    assert!(matches!(
        signing::verify(&public, expected, &mut &b"another message"[..]),
        Err(Error::InvalidSignature)
    ));
}

fn check_ecdsa(v: &Vector) {
    let sk = p256::ecdsa::SigningKey::from_slice(v.get("private")).expect("scalar");
    let public = sk.verifying_key().to_sec1_point(false);
    assert_eq!(public.as_bytes(), v.get("public"));
    let message = v.get("message");
    let sig: p256::ecdsa::Signature = sk.sign(message);
    let (p1363, der) = (v.get("signature_p1363"), v.get("signature_der"));
    assert_eq!(sig.to_bytes()[..], p1363[..], "RFC 6979 signature");
    assert_eq!(ecdsa::p1363_to_der(p1363).expect("to DER"), der);
    assert_eq!(ecdsa::der_to_p1363(der).expect("to P1363")[..], p1363[..]);
    ecdsa::verify_p256_sha256_der(public.as_bytes(), message, der).expect("DER verifies");
    ecdsa::verify_p256_sha256_p1363(public.as_bytes(), message, p1363).expect("P1363 verifies");
    assert!(ecdsa::verify_p256_sha256_der(public.as_bytes(), b"x", der).is_err());
    assert!(ecdsa::verify_p256_sha256_p1363(public.as_bytes(), message, der).is_err());
}

#[test]
fn format_md_vectors() {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "docs", "FORMAT.md"]
        .iter()
        .collect();
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let vectors = parse(&doc);
    let mut checked = Vec::new();
    let mut others = Vec::new();
    for v in &vectors {
        match v.name.as_str() {
            "oneshot" => check_oneshot(v),
            "stream-3-chunks" | "stream-empty" => check_stream(v),
            "dek-wrap" => check_dek_wrap(v),
            "ecies" => check_ecies(v),
            "signed-message" => check_signed_message(v),
            "ecdsa-p256" => check_ecdsa(v),
            // Vectors of other sections (protectors, keystore) are checked
            // by the tests of those modules.
            other => {
                others.push(other);
                continue;
            }
        }
        assert!(
            !checked.contains(&v.name.as_str()),
            "duplicate vector {}",
            v.name
        );
        checked.push(v.name.as_str());
    }
    println!(
        "docs/FORMAT.md: {} vectors checked both ways ({}); {} others left to their own tests {:?}",
        checked.len(),
        checked.join(", "),
        others.len(),
        others
    );
    let mut sorted = checked.clone();
    sorted.sort_unstable();
    let mut expected = CHECKED.to_vec();
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "every format's vector must be in docs/FORMAT.md"
    );
}

#[test]
fn format_md_keeps_the_shared_headings() {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "docs", "FORMAT.md"]
        .iter()
        .collect();
    let doc = std::fs::read_to_string(&path).expect("docs/FORMAT.md");
    for heading in [
        "## Conventions",
        "## Ciphertext header",
        "## One-shot ciphertext",
        "## Stream ciphertext",
        "## Data-key wrap",
        "## ECIES blob",
        "## Protectors",
        "## Keystore",
        "## Signed message",
        "## ECDSA P-256 signatures",
    ] {
        assert!(
            doc.lines().any(|l| l.starts_with(heading)),
            "docs/FORMAT.md lost its heading {heading:?}"
        );
    }
}
