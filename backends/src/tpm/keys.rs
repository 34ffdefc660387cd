//! Using an enrolled key: loading it under the SRK, satisfying its policy,
//! and signing with it.

use super::*;

impl Backend {
    /// Phase 2 of unwrap and sign: loads the key described by `key_blob`,
    /// satisfies its policy with `auth`, and hands session and key to `f`.
    pub(super) fn use_key<T>(
        &self,
        params: &Params,
        role: KeyRole,
        tcti: &str,
        auth: &[u8],
        f: impl FnOnce(
            &mut Scope<'_>,
            tss_esapi::interface_types::session_handles::AuthSession,
            tss_esapi::handles::KeyHandle,
        ) -> Result<T>,
    ) -> Result<T> {
        let blob = Blob::parse(match role {
            KeyRole::Ecdh => &params.ecdh,
            KeyRole::Sign => &params.sign,
        })?;
        // Response encryption only where the response is secret: ECDH_ZGen's
        // outPoint (the shared secret). Its input (the blob's ephemeral
        // point) and TPM2_Sign's digest and signature are public.
        let encrypt_response = role == KeyRole::Ecdh;
        self.with_tpm(tcti, |scope| {
            let (session, key) =
                Self::prepare_key(scope, params, &blob, auth, encrypt_response, tcti)?;
            f(scope, session, key)
        })
    }

    /// Signs `msg` with the enrolled signing key and checks the signature
    /// on the host; returns it DER-encoded.
    pub(super) fn sign_with(
        &self,
        params: &Params,
        tcti: &str,
        auth: &[u8],
        msg: &[u8],
    ) -> Result<Vec<u8>> {
        let verifying = hex::decode(&params.sign_public_key)
            .ok()
            .and_then(|b| ecies::parse_public_key(&b).ok())
            .ok_or(Error::Malformed {
                what: "TPM signing public key",
            })?;
        let digest: [u8; 32] = Sha256::digest(msg).into();
        let (r, s) = self.use_key(params, KeyRole::Sign, tcti, auth, |scope, session, key| {
            scope
                .sign(session, key, &digest)
                .map_err(|f| key_use_error(scope, &f, params, tcti))
        })?;
        let signature = p256::ecdsa::Signature::from_scalars(r, s).map_err(|_| {
            failed(
                "bad-signature",
                "the TPM returned an invalid ECDSA signature",
            )
        })?;
        p256::ecdsa::VerifyingKey::from(&verifying)
            .verify(msg, &signature)
            .map_err(|_| {
                failed(
                    "bad-signature",
                    "the TPM's signature does not verify under the enrolled key",
                )
            })?;
        Ok(signature.to_der().as_bytes().to_vec())
    }
}
