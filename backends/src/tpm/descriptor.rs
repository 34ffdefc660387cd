//! The TPM enrollment descriptor (`Enrollment.params`) and the pure
//! computations behind it: authorisation policy digests, the PIN's auth
//! value, PCR selection encoding. Nothing here talks to a TPM, so all of it
//! is checked byte for byte against vectors (docs/TPM.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use keyward_kms::{Error, Result};

/// Descriptor format version.
pub(crate) const VERSION: u32 = 1;

/// Name of the storage root key template (docs/TPM.md, "SRK").
pub(crate) const SRK_TEMPLATE: &str = "tcg-ecc-p256-srk";

/// `TPM_CC_PolicyAuthValue` (TPM 2.0 Part 2, 6.5.2).
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;
/// `TPM_CC_PolicyPCR`.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// `TPM_ALG_SHA256`.
const TPM_ALG_SHA256: u16 = 0x000B;
/// `sizeofSelect` for 24 PCRs, as tss-esapi and every PC TPM use.
const PCR_SELECT_OCTETS: usize = 3;
/// Highest PCR index a selection may name.
pub(crate) const MAX_PCR: u8 = keyward_kms::backend::options::Pcr::MAX;

/// A TPM object as stored: the marshalled `TPM2B_PUBLIC` and
/// `TPM2B_PRIVATE` (each with its 2-byte big-endian size prefix, the same
/// bytes as tpm2-tools' `-u key.pub -r key.priv` files), hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyBlob {
    /// Marshalled `TPM2B_PUBLIC`, hex.
    pub(crate) public: String,
    /// Marshalled `TPM2B_PRIVATE` (encrypted under the SRK), hex.
    pub(crate) private: String,
}

/// `Enrollment.params` of a TPM protector (docs/TPM.md, "Descriptor").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Params {
    /// Descriptor version, [`VERSION`], under `"v"` as in every other
    /// descriptor. Descriptors written before keyward unified the key say
    /// `"version"`; they still read.
    #[serde(rename = "v", alias = "version")]
    pub(crate) version: u32,
    /// The TCTI used at enrollment: where to look for the TPM when neither
    /// the caller nor `KEYWARD_TPM_TCTI` says otherwise.
    pub(crate) tcti: String,
    /// The storage root key template, [`SRK_TEMPLATE`].
    pub(crate) srk_template: String,
    /// SHA-256 of the SRK's uncompressed public point (`04 || x || y`),
    /// hex: the identity of this TPM's owner hierarchy. A different TPM,
    /// or the same TPM after `TPM2_Clear`, has a different SRK.
    pub(crate) srk_id: String,
    /// The key's authorisation needs the PIN (PolicyAuthValue).
    pub(crate) pin: bool,
    /// SHA-256 PCRs the key is bound to (PolicyPCR), ascending.
    pub(crate) pcrs: Vec<u8>,
    /// The SHA-256 bank values of those PCRs at enrollment, hex, by index.
    pub(crate) pcr_values: BTreeMap<u8, String>,
    /// The authPolicy of both keys, hex (empty: no policy, userWithAuth).
    pub(crate) policy: String,
    /// The P-256 ECDH (decrypt) key wrapped to (its point is
    /// `Enrollment.public_key`).
    pub(crate) ecdh: KeyBlob,
    /// The P-256 ECDSA signing key.
    pub(crate) sign: KeyBlob,
    /// The signing key's public point, SEC1 compressed, hex.
    pub(crate) sign_public_key: String,
}

impl Params {
    /// Parses and checks `Enrollment.params`.
    pub(crate) fn from_json(value: &serde_json::Value) -> Result<Self> {
        let params: Self = serde_json::from_value(value.clone()).map_err(|_| Error::Malformed {
            what: "TPM enrollment descriptor",
        })?;
        if params.version != VERSION {
            return Err(Error::UnsupportedFormat {
                version: u8::try_from(params.version).unwrap_or(u8::MAX),
                supported: VERSION as u8,
            });
        }
        if params.srk_template != SRK_TEMPLATE {
            return Err(Error::Malformed {
                what: "TPM enrollment names an unknown SRK template",
            });
        }
        validate_pcrs(&params.pcrs)?;
        if params
            .pcr_values
            .keys()
            .copied()
            .ne(params.pcrs.iter().copied())
        {
            return Err(Error::Malformed {
                what: "TPM enrollment PCR values do not match its PCR list",
            });
        }
        // The stored policy must be the one the settings imply: a descriptor
        // edited to drop the PIN would otherwise make us skip the prompt and
        // fail later with a confusing policy error.
        let values = params.pcr_value_bytes()?;
        let expected = policy_digest(params.pin, &params.pcrs, &values);
        if expected.map(hex::encode).unwrap_or_default() != params.policy {
            return Err(Error::Malformed {
                what: "TPM enrollment policy does not match its settings",
            });
        }
        Ok(params)
    }

    /// As JSON for `Enrollment.params`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a struct of strings and numbers serialises")
    }

    /// The enrolled PCR values, decoded, in PCR order.
    pub(crate) fn pcr_value_bytes(&self) -> Result<Vec<[u8; 32]>> {
        self.pcr_values
            .values()
            .map(|v| {
                hex::decode(v)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or(Error::Malformed {
                        what: "TPM enrollment PCR value",
                    })
            })
            .collect()
    }

    /// The short identity shown to users and stored in
    /// `Enrollment.device_id`.
    pub(crate) fn device_id(&self) -> String {
        device_id(&self.srk_id)
    }
}

/// `srk:` and the first 16 hex digits of the SRK identity.
pub(crate) fn device_id(srk_id: &str) -> String {
    format!("srk:{}", srk_id.get(..16).unwrap_or(srk_id))
}

/// SHA-256 of an uncompressed SEC1 point, hex.
pub(crate) fn srk_id(uncompressed_point: &[u8]) -> String {
    hex::encode(Sha256::digest(uncompressed_point))
}

fn validate_pcrs(pcrs: &[u8]) -> Result<()> {
    if pcrs.iter().any(|&p| p > MAX_PCR) || pcrs.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Malformed {
            what: "TPM enrollment PCR list",
        });
    }
    Ok(())
}

/// The marshalled `TPML_PCR_SELECTION` for `pcrs` in the SHA-256 bank:
/// `count=1 || TPM_ALG_SHA256 || sizeofSelect=3 || pcrSelect[3]`.
pub(crate) fn pcr_selection_bytes(pcrs: &[u8]) -> Vec<u8> {
    let mut select = [0u8; PCR_SELECT_OCTETS];
    for &pcr in pcrs {
        select[usize::from(pcr / 8)] |= 1 << (pcr % 8);
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    out.push(PCR_SELECT_OCTETS as u8);
    out.extend_from_slice(&select);
    out
}

/// The `pcrDigest` of TPM2_PolicyPCR: SHA-256 over the selected PCR values
/// concatenated in ascending PCR order.
pub(crate) fn pcr_digest(values: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for v in values {
        h.update(v);
    }
    h.finalize().into()
}

/// The authPolicy for the settings, or `None` when there is nothing to
/// enforce (no PIN, no PCRs: the key is used with its empty auth value).
///
/// Order: PolicyPCR (if any PCRs), then PolicyAuthValue (if a PIN);
/// `policyDigest' = SHA-256(policyDigest || TPM_CC || args)` from 32 zero
/// bytes (TPM 2.0 Part 3, 23.7 and 23.18). PolicyAuthValue, not
/// PolicyPassword: with parameter encryption tpm2-tss returns wrong data
/// for PolicyPassword sessions (tpm2-tss #2574, docs/HARDWARE.md).
pub(crate) fn policy_digest(pin: bool, pcrs: &[u8], pcr_values: &[[u8; 32]]) -> Option<[u8; 32]> {
    if !pin && pcrs.is_empty() {
        return None;
    }
    let mut digest = [0u8; 32];
    if !pcrs.is_empty() {
        let mut h = Sha256::new();
        h.update(digest);
        h.update(TPM_CC_POLICY_PCR.to_be_bytes());
        h.update(pcr_selection_bytes(pcrs));
        h.update(pcr_digest(pcr_values));
        digest = h.finalize().into();
    }
    if pin {
        let mut h = Sha256::new();
        h.update(digest);
        h.update(TPM_CC_POLICY_AUTH_VALUE.to_be_bytes());
        digest = h.finalize().into();
    }
    Some(digest)
}

/// The TPM auth value for a PIN: SHA-256 of its UTF-8 bytes (as
/// systemd-cryptenroll does), so every PIN has the same length on the wire
/// and in the object.
pub(crate) fn pin_auth(pin: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(Sha256::digest(pin.as_bytes()).into())
}

/// The TPM2B encoding of `bytes`: 2-byte big-endian length, then the bytes.
pub(crate) fn tpm2b(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("TPM buffers are shorter than 64 KiB");
    let mut out = Vec::with_capacity(2 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The body of a TPM2B encoding, checking the length prefix.
pub(crate) fn from_tpm2b(bytes: &[u8]) -> Result<&[u8]> {
    let malformed = Error::Malformed {
        what: "TPM2B blob in TPM enrollment",
    };
    let (len, body) = bytes.split_first_chunk::<2>().ok_or(malformed)?;
    if usize::from(u16::from_be_bytes(*len)) != body.len() {
        return Err(Error::Malformed {
            what: "TPM2B blob in TPM enrollment",
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_auth_value_alone_is_the_well_known_digest() {
        // The PolicyAuthValue-only digest that tpm2-tools prints for
        // `tpm2_policyauthvalue` on a trial session.
        let d = policy_digest(true, &[], &[]).expect("policy");
        assert_eq!(
            hex::encode(d),
            "8fcd2169ab92694e0c633f1ab772842b8241bbc20288981fc7ac1eddc1fddb0e"
        );
        assert_eq!(policy_digest(false, &[], &[]), None);
    }

    #[test]
    fn pcr7_policy_vectors() {
        // docs/TPM.md, "Policy": PCR 7 at its reset value (swtpm), without
        // and with the PIN. The second is what a real swtpm enrollment with
        // pcrs=7 stored.
        let zero = [[0u8; 32]];
        assert_eq!(
            hex::encode(policy_digest(false, &[7], &zero).expect("policy")),
            "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b"
        );
        assert_eq!(
            hex::encode(policy_digest(true, &[7], &zero).expect("policy")),
            "b8db92fae7c1e0c588e7352d2fc10f27c7b384e32f706a520cb10bf7ffee8970"
        );
    }

    #[test]
    fn pcr_selection_encoding() {
        assert_eq!(
            hex::encode(pcr_selection_bytes(&[7, 11])),
            "00000001000b03800800"
        );
        assert_eq!(
            hex::encode(pcr_selection_bytes(&[0, 16, 23])),
            "00000001000b03010081"
        );
    }

    #[test]
    fn pcr_policy_vector() {
        // PCR 16 at its reset value (32 zero bytes), no PIN, then with PIN.
        let zero = [[0u8; 32]];
        let pcr_only = policy_digest(false, &[16], &zero).expect("policy");
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(0x17fu32.to_be_bytes());
        h.update(hex::decode("00000001000b03000001").expect("hex"));
        h.update(Sha256::digest([0u8; 32]));
        assert_eq!(pcr_only, <[u8; 32]>::from(h.finalize()));
        let with_pin = policy_digest(true, &[16], &zero).expect("policy");
        let mut h = Sha256::new();
        h.update(pcr_only);
        h.update(0x16bu32.to_be_bytes());
        assert_eq!(with_pin, <[u8; 32]>::from(h.finalize()));
    }

    #[test]
    fn tpm2b_round_trip_and_rejects() {
        let enc = tpm2b(b"abc");
        assert_eq!(enc, [0, 3, b'a', b'b', b'c']);
        assert_eq!(from_tpm2b(&enc).expect("ok"), b"abc");
        assert!(from_tpm2b(&enc[..4]).is_err());
        assert!(from_tpm2b(&[0]).is_err());
        assert!(from_tpm2b(&[0, 1, 2, 3]).is_err());
    }

    #[test]
    fn pin_auth_is_sha256() {
        assert_eq!(
            hex::encode(*pin_auth("123456")),
            "8d969eef6ecad3c29a3a629280e686cf0c3f5d5a86aff3ca12020c923adc6c92"
        );
    }

    /// A descriptor without PIN or PCRs, with placeholder blobs.
    fn unbound() -> Params {
        let blob = KeyBlob {
            public: "00".into(),
            private: "00".into(),
        };
        Params {
            version: VERSION,
            tcti: "device:/dev/tpmrm0".into(),
            srk_template: SRK_TEMPLATE.into(),
            srk_id: "ab".repeat(32),
            pin: false,
            pcrs: vec![],
            pcr_values: BTreeMap::new(),
            policy: String::new(),
            ecdh: blob.clone(),
            sign: blob,
            sign_public_key: String::new(),
        }
    }

    #[test]
    fn descriptor_checks_policy_against_settings() {
        let values = [[0u8; 32]];
        let policy = policy_digest(true, &[16], &values).expect("policy");
        let p = Params {
            pin: true,
            pcrs: vec![16],
            pcr_values: BTreeMap::from([(16, hex::encode([0u8; 32]))]),
            policy: hex::encode(policy),
            ..unbound()
        };
        assert_eq!(Params::from_json(&p.to_json()).expect("valid"), p);
        let mut no_pin = p.clone();
        no_pin.pin = false;
        assert!(Params::from_json(&no_pin.to_json()).is_err());
        let mut other_pcr = p.clone();
        other_pcr.pcrs = vec![7];
        assert!(Params::from_json(&other_pcr.to_json()).is_err());
        let mut v2 = p;
        v2.version = 2;
        assert!(matches!(
            Params::from_json(&v2.to_json()),
            Err(Error::UnsupportedFormat { version: 2, .. })
        ));
        assert!(Params::from_json(&serde_json::json!({"version": 1})).is_err());
    }

    #[test]
    fn version_key_is_v_and_old_descriptors_still_read() {
        let p = unbound();
        let new = p.to_json();
        assert_eq!(new["v"], 1, "{new}");
        assert!(new.get("version").is_none(), "{new}");
        assert_eq!(Params::from_json(&new).expect("new key"), p);
        // A descriptor stored by an earlier keyward.
        let mut old = new.clone();
        let map = old.as_object_mut().expect("an object");
        let v = map.remove("v").expect("v");
        map.insert("version".into(), v);
        assert_eq!(Params::from_json(&old).expect("old key"), p);
        // Both keys at once is not a descriptor keyward wrote.
        let mut both = new;
        both["version"] = 1.into();
        assert!(Params::from_json(&both).is_err());
    }
}
