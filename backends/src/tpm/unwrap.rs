//! The TPM's side of the shared ECDH-device unwrap
//! ([`keyward_kms::backend::ecdh_device`]): the checked PIN, then
//! TPM2_ECDH_ZGen.

use super::{
    Backend, BackendKind, Blob, Callbacks, EcdhDevice, Enrollment, Error, KIND, KeyRole, Params,
    Result, Secret32, Zeroizing, ecies, fmt, key_use_error,
};

/// The backend as the shared unwrap sees it ([`ecdh_device`]).
pub(super) struct Device<'b>(pub(super) &'b Backend);

/// The TPM to use and the enrolled key's hashed PIN, checked against the
/// TPM's state: the [`EcdhDevice`] session of this backend. The TPM session
/// itself is opened for each key use.
pub(super) struct TpmSession {
    pub(super) tcti: String,
    pub(super) auth: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TpmSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSession")
            .field("tcti", &self.tcti)
            .finish_non_exhaustive()
    }
}

impl EcdhDevice for Device<'_> {
    type Params = Params;
    type Session<'a>
        = TpmSession
    where
        Self: 'a;

    fn kind(&self) -> BackendKind {
        KIND
    }

    fn params(&self, enrollment: &Enrollment) -> Result<Params> {
        let params = Params::from_json(&enrollment.params)?;
        let blob = Blob::parse(&params.ecdh)?;
        let point = blob.public_key().ok_or(Error::Malformed {
            what: "TPM ECDH key in enrollment",
        })?;
        if ecies::compress(&point).as_slice() != enrollment.public_key.as_slice() {
            return Err(Error::Malformed {
                what: "TPM enrollment public key does not match its key blob",
            });
        }
        Ok(params)
    }

    fn open_session<'a>(
        &'a self,
        _enrollment: &'a Enrollment,
        params: &'a Params,
        ui: &'a dyn Callbacks,
    ) -> Result<TpmSession> {
        let tcti = self.0.tcti_for(None, Some(&params.tcti));
        let auth = self.0.checks_and_pin(params, &tcti, ui)?;
        Ok(TpmSession { tcti, auth })
    }

    fn ecdh(
        &self,
        session: &mut TpmSession,
        params: &Params,
        peer: &p256::PublicKey,
    ) -> Result<Secret32> {
        let tcti = &session.tcti;
        self.0.use_key(
            params,
            KeyRole::Ecdh,
            tcti,
            &session.auth,
            |scope, tpm_session, key| {
                scope
                    .ecdh_zgen(tpm_session, key, peer)
                    .map_err(|f| key_use_error(scope, &f, params, tcti))
            },
        )
    }
}
