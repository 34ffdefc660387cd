//! Prints the fixed test vectors of docs/FORMAT.md, as the fenced
//! ```` ```vector NAME ```` blocks that tests/tests/format_vectors.rs parses.
//! Run with `cargo run -p keyward-kms --example format_vectors`.
//!
//! The inputs are fixed byte patterns; the outputs come from the same code
//! paths as production, through the `_with_nonce` / `_with_params` /
//! `_with_ephemeral` test hooks. Regenerating must give the same bytes.
#![allow(clippy::print_stdout, missing_docs, reason = "generator output")]

use keyward_kms::crypto::{ecdsa, ecies, envelope, kw, signing, stream};
use keyward_kms::{DataClass, KeyName, KeyPurpose, Secret32};
use p256::ecdsa::signature::Signer;

/// `len` bytes counting up from `start`.
fn pattern(start: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| start.wrapping_add(i as u8)).collect()
}

fn secret(start: u8) -> Secret32 {
    Secret32::try_from_slice(&pattern(start, 32)).expect("32 bytes")
}

fn block(name: &str, fields: &[(&str, &[u8])]) {
    println!("```vector {name}");
    for (field, value) in fields {
        let hex = hex::encode(value);
        let mut lines = hex.as_bytes().chunks(64);
        let first = lines
            .next()
            .map_or("", |l| std::str::from_utf8(l).expect("hex"));
        println!("{}", format!("{field}: {first}").trim_end());
        for line in lines {
            println!("    {}", std::str::from_utf8(line).expect("hex"));
        }
    }
    println!("```\n");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One-shot.
    let key = secret(0x00);
    let name = KeyName::new("notes")?;
    let nonce: [u8; 12] = pattern(0xa0, 12).try_into().expect("12");
    let plaintext = b"hello, keyward";
    let context = b"record:42";
    let ct = envelope::seal_with_nonce(
        &key,
        &name,
        3,
        DataClass::Private,
        context,
        plaintext,
        nonce,
    )?;
    let header_len = envelope::parse_header(&ct)?.1;
    let mut aad = ct[..header_len].to_vec();
    aad.push(DataClass::Private.code());
    aad.extend_from_slice(context);
    block(
        "oneshot",
        &[
            ("key", key.expose()),
            ("name", name.as_str().as_bytes()),
            ("version", &3u32.to_be_bytes()),
            ("class", &[DataClass::Private.code()]),
            ("context", context),
            ("nonce", &nonce),
            ("plaintext", plaintext),
            ("header", &ct[..header_len]),
            ("aad", &aad),
            ("ciphertext", &ct),
        ],
    );

    // Streams.
    let key = secret(0x40);
    let name = KeyName::new("files")?;
    let salt: [u8; 32] = pattern(0xc0, 32).try_into().expect("32");
    for (vector, exp, len) in [("stream-3-chunks", 6u8, 150usize), ("stream-empty", 6, 0)] {
        let plaintext = pattern(0x00, len);
        let mut ct = Vec::new();
        stream::encrypt_with_params(
            &key,
            &name,
            7,
            DataClass::Sensitive,
            b"backup",
            exp,
            salt,
            &mut &plaintext[..],
            &mut ct,
            &mut |_| {},
        )?;
        let header_len = envelope::parse_header(&ct)?.1 + 1 + 32;
        let stream_key =
            stream::stream_key(&key, &ct[..header_len], DataClass::Sensitive, b"backup");
        block(
            vector,
            &[
                ("key", key.expose()),
                ("name", name.as_str().as_bytes()),
                ("version", &7u32.to_be_bytes()),
                ("class", &[DataClass::Sensitive.code()]),
                ("context", b"backup"),
                ("chunk_exp", &[exp]),
                ("salt", &salt),
                ("plaintext", &plaintext),
                ("stream_key", stream_key.expose()),
                ("ciphertext", &ct),
            ],
        );
    }

    // Data-key wrap.
    let master = secret(0x80);
    let store_id: [u8; 16] = pattern(0xf0, 16).try_into().expect("16");
    let name = KeyName::new("assistant-store")?;
    let label = kw::DekLabel {
        store_id: &store_id,
        name: &name,
        version: 2,
        purpose: KeyPurpose::Encrypt,
        class: DataClass::Private,
    };
    let kek = kw::dek_kek(&master, &label);
    let data_key = secret(0x60);
    let wrapped = kw::wrap(&kek, &data_key);
    block(
        "dek-wrap",
        &[
            ("master", master.expose()),
            ("store_id", &store_id),
            ("name", name.as_str().as_bytes()),
            ("version", &2u32.to_be_bytes()),
            ("purpose", &[KeyPurpose::Encrypt.code()]),
            ("class", &[DataClass::Private.code()]),
            ("kek", kek.expose()),
            ("key", data_key.expose()),
            ("wrapped", &wrapped),
        ],
    );

    // ECIES.
    let recipient = p256::SecretKey::from_slice(&pattern(0x01, 32))?;
    let recipient_pub = ecies::compress(&recipient.public_key());
    let ephemeral = p256::SecretKey::from_slice(&pattern(0x21, 32))?;
    let mk = secret(0x80);
    let aad = b"keyward ecies vector aad";
    let blob = ecies::seal_with_ephemeral(&recipient_pub, &mk, aad, &ephemeral)?;
    block(
        "ecies",
        &[
            ("recipient_private", &recipient.to_bytes()),
            ("recipient_public", &recipient_pub),
            ("ephemeral_private", &ephemeral.to_bytes()),
            ("secret", mk.expose()),
            ("aad", aad),
            ("blob", &blob),
        ],
    );

    // Signed message.
    let seed = secret(0x20);
    let header = signing::SignedHeader {
        key: KeyName::new("outbox")?,
        version: 1,
        signer: pattern(0x10, 16).try_into().expect("16"),
        counter: 42,
        timestamp: 1_767_225_600,
        audience: "bank.example".to_owned(),
    };
    let message = b"transfer 10 EUR to Alice";
    let blob = signing::sign(&seed, &header, &mut &message[..])?;
    block(
        "signed-message",
        &[
            ("seed", seed.expose()),
            ("public_key", &signing::public_key(&seed)),
            ("name", header.key.as_str().as_bytes()),
            ("version", &header.version.to_be_bytes()),
            ("signer", &header.signer),
            ("counter", &header.counter.to_be_bytes()),
            ("timestamp", &header.timestamp.to_be_bytes()),
            ("audience", header.audience.as_bytes()),
            ("message", message),
            ("blob", &blob),
        ],
    );

    // ECDSA P-256 encodings (RFC 6979 deterministic signature).
    let sk = p256::ecdsa::SigningKey::from_slice(&pattern(0x41, 32))?;
    let public = sk.verifying_key().to_sec1_point(false);
    let message = b"keyward audit checkpoint";
    let sig: p256::ecdsa::Signature = sk.sign(message);
    let p1363 = sig.to_bytes();
    let der = ecdsa::p1363_to_der(&p1363)?;
    block(
        "ecdsa-p256",
        &[
            ("private", &sk.to_bytes()),
            ("public", public.as_bytes()),
            ("message", message),
            ("signature_p1363", &p1363),
            ("signature_der", &der),
        ],
    );
    Ok(())
}
