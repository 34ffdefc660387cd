//! The YubiKey's side of the shared ECDH-device unwrap
//! ([`keyward_kms::backend::ecdh_device`]): the PIN-verified slot and
//! its ECDH.

use super::*;

/// The backend as the shared unwrap sees it ([`ecdh_device`]).
pub(super) struct Device<'b>(pub(super) &'b Backend);

/// The enrolled slot of a YubiKey whose PIN was accepted (the card lock
/// held): the [`EcdhDevice`] session of this backend.
pub(super) struct SlotSession<'a> {
    pub(super) card: Session<'a>,
    pub(super) slot: SlotId,
}

impl fmt::Debug for SlotSession<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotSession")
            .field("serial", &self.card.serial)
            .field("slot", &self.slot)
            .finish()
    }
}

impl<'b> EcdhDevice for Device<'b> {
    type Params = Params;
    type Session<'a>
        = SlotSession<'b>
    where
        Self: 'a;

    fn kind(&self) -> BackendKind {
        KIND
    }

    fn params(&self, enrollment: &Enrollment) -> Result<Params> {
        Params::from_json(&enrollment.params)
    }

    fn open_session<'a>(
        &'a self,
        enrollment: &'a Enrollment,
        params: &'a Params,
        ui: &'a dyn Callbacks,
    ) -> Result<SlotSession<'b>> {
        let slot = slot_id(params.slot_number()?)?;
        let card = self.0.unlock_slot(enrollment, params, ui)?;
        Ok(SlotSession { card, slot })
    }

    fn ecdh(
        &self,
        session: &mut SlotSession<'_>,
        params: &Params,
        peer: &p256::PublicKey,
    ) -> Result<Secret32> {
        let touch = params.touch_policy.needs_touch();
        let point = peer.to_sec1_point(false);
        let s = &mut session.card;
        let r = piv::decrypt_data(
            s.yk()?,
            point.as_bytes(),
            AlgorithmId::EccP256,
            session.slot,
        );
        let z = r.map_err(|e| s.fail(e, Op::KeyUse { touch }))?;
        Secret32::try_from_slice(&z).map_err(|_| {
            failed(
                "ecdh",
                "the YubiKey returned a shared secret of the wrong size",
            )
        })
    }
}
