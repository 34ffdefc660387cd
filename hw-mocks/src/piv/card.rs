//! The card state machine: applet selection, ISO 7816 command and response
//! chaining, and the PIV, Management and OTP applets of a YubiKey 5.
//!
//! [`Card::process`] takes one raw command APDU and returns response data
//! plus SW1 SW2. It never panics on any input (see the proptest).

use std::collections::BTreeMap;
use std::time::Duration;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::apdu::{self, Command, Sw, push_tlv};
use super::apdu::{
    SW_BLOCKED, SW_CLA_NOT_SUPPORTED, SW_CONDITIONS, SW_INS_NOT_SUPPORTED, SW_NO_SPACE,
    SW_NOT_FOUND, SW_OK, SW_REF_NOT_FOUND, SW_SECURITY, SW_WRONG_DATA, SW_WRONG_LENGTH,
    SW_WRONG_P1P2, sw_retries,
};
use super::keys::{self, SlotKey, alg};

/// PIV application AID (NIST SP 800-73-4), full form.
pub const AID_PIV: &[u8] = &[
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
/// Yubico Management application AID.
pub const AID_MGMT: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];
/// Yubico OTP application AID.
pub const AID_OTP: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01];

/// The YubiKey 5 ATR (T=1), docs/HARDWARE.md.
pub const ATR: &[u8] = &[
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

/// The default management key (3DES, and AES-192 on firmware 5.7).
pub const DEFAULT_MGMT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// Default PIN.
pub const DEFAULT_PIN: &[u8] = b"123456";
/// Default PUK.
pub const DEFAULT_PUK: &[u8] = b"12345678";

/// Largest accepted command chain (PUT DATA of a big certificate is ~3 KB).
const MAX_CHAIN: usize = 16 * 1024;
/// Largest data object (YubiKey 5: 3063 bytes).
const MAX_OBJECT: usize = 3063;

/// PIN policies (Yubico).
pub mod pin_policy {
    /// Slot default.
    pub const DEFAULT: u8 = 0;
    /// Never ask for the PIN.
    pub const NEVER: u8 = 1;
    /// Once per session.
    pub const ONCE: u8 = 2;
    /// Before every operation.
    pub const ALWAYS: u8 = 3;
}

/// Touch policies (Yubico).
pub mod touch_policy {
    /// Slot default (never).
    pub const DEFAULT: u8 = 0;
    /// Never.
    pub const NEVER: u8 = 1;
    /// Every operation.
    pub const ALWAYS: u8 = 2;
    /// Cached for 15 s.
    pub const CACHED: u8 = 3;
}

/// How the simulated user answers a touch request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Touch at once.
    Approve,
    /// Never touch: the operation fails with `6982` (as after the timeout).
    Deny,
    /// Touch after a delay.
    Delay(Duration),
}

/// Static identity of a simulated card.
#[derive(Debug, Clone)]
pub struct CardConfig {
    /// Serial number (GET SERIAL, attestation).
    pub serial: u32,
    /// Firmware version; 5.7+ defaults to an AES-192 management key.
    pub version: [u8; 3],
    /// Seed of the simulated attestation key (slot F9, P-256). The
    /// attestation root certificate (object 5FFF01) is self-signed by it.
    pub attestation_seed: [u8; 32],
}

impl Default for CardConfig {
    fn default() -> Self {
        Self {
            serial: 12_345_678,
            version: [5, 4, 3],
            attestation_seed: [0x42; 32],
        }
    }
}

/// A key in a slot with its policies.
#[derive(Debug, Clone)]
pub struct KeySlot {
    /// The private key.
    pub key: SlotKey,
    /// Effective PIN policy (never DEFAULT).
    pub pin_policy: u8,
    /// Effective touch policy (never DEFAULT).
    pub touch_policy: u8,
    /// 1 generated, 2 imported.
    pub origin: u8,
}

/// A PIN or PUK with its retry counter.
#[derive(Debug, Clone)]
pub struct Secret {
    /// The value (6-8 bytes), zeroized on drop.
    pub value: Zeroizing<Vec<u8>>,
    /// Configured retries.
    pub max: u8,
    /// Retries left.
    pub left: u8,
    /// Whether it is still the factory default.
    pub default: bool,
}

impl Secret {
    fn new(value: &[u8], max: u8) -> Self {
        Self {
            value: Zeroizing::new(value.to_vec()),
            max,
            left: max,
            default: true,
        }
    }

    /// Checks a padded 8-byte candidate; updates the counter.
    fn check(&mut self, padded: &[u8]) -> Result<(), Sw> {
        if self.left == 0 {
            return Err(SW_BLOCKED);
        }
        let candidate = unpad(padded);
        if bool::from(candidate.ct_eq(self.value.as_slice())) {
            self.left = self.max;
            Ok(())
        } else {
            self.left -= 1;
            if self.left == 0 {
                Err(SW_BLOCKED)
            } else {
                Err(sw_retries(self.left))
            }
        }
    }
}

/// Strips the `FF` padding of an 8-byte PIN block.
fn unpad(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&x| x == 0xFF).unwrap_or(b.len());
    &b[..end]
}

/// The persistent state of the PIV applet.
#[derive(Debug, Clone)]
pub struct PivState {
    /// PIN.
    pub pin: Secret,
    /// PUK.
    pub puk: Secret,
    /// Management key algorithm.
    pub mgmt_alg: u8,
    /// Management key.
    pub mgmt_key: Zeroizing<Vec<u8>>,
    /// Whether the management key needs touch.
    pub mgmt_touch: bool,
    /// Whether the management key is the factory default.
    pub mgmt_default: bool,
    /// Keys by slot.
    pub slots: BTreeMap<u8, KeySlot>,
    /// Data objects by tag (value without the `53` wrapper).
    pub objects: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl PivState {
    fn factory(cfg: &CardConfig) -> Self {
        let mgmt_alg = if cfg.version >= [5, 7, 0] {
            alg::AES192
        } else {
            alg::TDES
        };
        let mut state = Self {
            pin: Secret::new(DEFAULT_PIN, 3),
            puk: Secret::new(DEFAULT_PUK, 3),
            mgmt_alg,
            mgmt_key: Zeroizing::new(DEFAULT_MGMT_KEY.to_vec()),
            mgmt_touch: false,
            mgmt_default: true,
            slots: BTreeMap::new(),
            objects: BTreeMap::new(),
        };
        state.install_attestation(cfg);
        state
    }

    fn install_attestation(&mut self, cfg: &CardConfig) {
        let key = attestation_key(cfg);
        let slot_key = SlotKey::P256(key.clone());
        let cert = keys::certificate(
            &keys::CertFields {
                issuer_cn: "keyward simulated Yubico PIV Root CA",
                subject_cn: "keyward simulated YubiKey PIV Attestation",
                subject_key: &slot_key,
                yubico: None,
            },
            &key,
        );
        self.slots.insert(
            0xF9,
            KeySlot {
                key: slot_key,
                pin_policy: pin_policy::NEVER,
                touch_policy: touch_policy::NEVER,
                origin: 2,
            },
        );
        self.objects.insert(vec![0x5F, 0xFF, 0x01], cert);
    }
}

/// The attestation key derived from the configured seed.
pub fn attestation_key(cfg: &CardConfig) -> p256::SecretKey {
    let mut seed = cfg.attestation_seed;
    loop {
        if let Ok(k) = p256::SecretKey::from_slice(&seed) {
            return k;
        }
        seed[31] = seed[31].wrapping_add(1);
    }
}

/// Which applet is selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Applet {
    #[default]
    None,
    Piv,
    Mgmt,
    Otp,
}

/// Volatile state, cleared on power-off and reset.
#[derive(Default)]
struct Session {
    applet: Applet,
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    pending: Vec<u8>,
    pin_ok: bool,
    pin_always: bool,
    mgmt_ok: bool,
    witness: Option<Zeroizing<Vec<u8>>>,
    challenge: Option<Zeroizing<Vec<u8>>>,
}

/// A simulated YubiKey 5 (PIV, Management, OTP applets).
pub struct Card {
    cfg: CardConfig,
    piv: PivState,
    session: Session,
    touch: Touch,
    touches: u64,
}

impl std::fmt::Debug for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Card")
            .field("serial", &self.cfg.serial)
            .field("version", &self.cfg.version)
            .finish_non_exhaustive()
    }
}

type Reply = Result<Vec<u8>, Sw>;

impl Card {
    /// A factory-fresh card.
    pub fn new(cfg: CardConfig) -> Self {
        let piv = PivState::factory(&cfg);
        Self {
            cfg,
            piv,
            session: Session::default(),
            touch: Touch::Approve,
            touches: 0,
        }
    }

    /// The card's configuration.
    pub fn config(&self) -> &CardConfig {
        &self.cfg
    }

    /// The persistent PIV state (for inspection and persistence).
    pub fn piv_state(&self) -> &PivState {
        &self.piv
    }

    /// Replaces the persistent PIV state (restoring a saved card).
    pub fn set_piv_state(&mut self, state: PivState) {
        self.piv = state;
        self.session = Session::default();
    }

    /// Factory reset: PIN, PUK, management key, keys and objects back to
    /// defaults (the attestation key and certificate are kept).
    pub fn factory_reset(&mut self) {
        self.piv = PivState::factory(&self.cfg);
        self.session = Session::default();
    }

    /// Sets how touch requests are answered.
    pub fn set_touch(&mut self, touch: Touch) {
        self.touch = touch;
    }

    /// How many touches were requested so far.
    pub fn touches(&self) -> u64 {
        self.touches
    }

    /// Power off, power on or warm reset: volatile state is lost.
    pub fn reset_session(&mut self) {
        self.session = Session::default();
    }

    /// Processes one command APDU; returns response data followed by SW1 SW2.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        let (mut data, sw) = match self.process_inner(raw) {
            Ok((data, sw)) => (data, sw),
            Err(sw) => (Vec::new(), sw),
        };
        data.extend_from_slice(&sw.to_be_bytes());
        data
    }

    fn process_inner(&mut self, raw: &[u8]) -> Result<(Vec<u8>, Sw), Sw> {
        let cmd = apdu::parse(raw).inspect_err(|_| {
            self.session.chain = None;
            self.session.pending.clear();
        })?;
        if cmd.cla & !0x10 != 0 {
            self.session.chain = None;
            return Err(SW_CLA_NOT_SUPPORTED);
        }
        if cmd.ins == 0xC0 {
            if self.session.pending.is_empty() {
                return Err(SW_CONDITIONS);
            }
            let rest = std::mem::take(&mut self.session.pending);
            return Ok(self.chunk(rest));
        }
        self.session.pending.clear();
        if cmd.chained() {
            let chain = match self.session.chain.take() {
                Some((ins, p1, p2, mut buf)) if (ins, p1, p2) == (cmd.ins, cmd.p1, cmd.p2) => {
                    buf.extend_from_slice(&cmd.data);
                    (ins, p1, p2, buf)
                }
                _ => (cmd.ins, cmd.p1, cmd.p2, cmd.data),
            };
            if chain.3.len() > MAX_CHAIN {
                return Err(SW_WRONG_LENGTH);
            }
            self.session.chain = Some(chain);
            return Ok((Vec::new(), SW_OK));
        }
        let cmd = match self.session.chain.take() {
            Some((ins, p1, p2, mut buf)) if (ins, p1, p2) == (cmd.ins, cmd.p1, cmd.p2) => {
                buf.extend_from_slice(&cmd.data);
                if buf.len() > MAX_CHAIN {
                    return Err(SW_WRONG_LENGTH);
                }
                Command { data: buf, ..cmd }
            }
            _ => cmd,
        };
        let resp = self.dispatch(&cmd)?;
        Ok(self.chunk(resp))
    }

    /// Returns up to 256 bytes and keeps the rest for GET RESPONSE (`61xx`).
    fn chunk(&mut self, mut resp: Vec<u8>) -> (Vec<u8>, Sw) {
        if resp.len() <= 256 {
            return (resp, SW_OK);
        }
        let rest = resp.split_off(256);
        let sw = 0x6100 | Sw::from(u8::try_from(rest.len()).unwrap_or(0));
        self.session.pending = rest;
        (resp, sw)
    }

    fn dispatch(&mut self, cmd: &Command) -> Reply {
        if cmd.ins == 0xA4 {
            return self.select(cmd);
        }
        match self.session.applet {
            Applet::None => Err(SW_INS_NOT_SUPPORTED),
            Applet::Piv => self.piv(cmd),
            Applet::Mgmt => self.mgmt(cmd),
            Applet::Otp => self.otp(cmd),
        }
    }

    fn select(&mut self, cmd: &Command) -> Reply {
        if cmd.p1 != 0x04 {
            return Err(SW_WRONG_P1P2);
        }
        let aid = cmd.data.as_slice();
        let matches = |full: &[u8]| aid.len() >= 5 && full.starts_with(aid);
        let applet = if matches(AID_PIV) {
            Applet::Piv
        } else if matches(AID_MGMT) {
            Applet::Mgmt
        } else if matches(AID_OTP) {
            Applet::Otp
        } else {
            return Err(SW_NOT_FOUND);
        };
        // SELECT resets the security status (SP 800-73-4; the `yubikey`
        // crate re-selects to log the PIN out).
        self.session = Session {
            applet,
            ..Session::default()
        };
        let [ma, mi, pa] = self.cfg.version;
        Ok(match applet {
            Applet::Piv => {
                let mut tmpl = Vec::new();
                push_tlv(&mut tmpl, &[0x4F], &AID_PIV[5..]);
                let mut alloc = Vec::new();
                push_tlv(&mut alloc, &[0x4F], &AID_PIV[..5]);
                push_tlv(&mut tmpl, &[0x79], &alloc);
                let mut out = Vec::new();
                push_tlv(&mut out, &[0x61], &tmpl);
                out
            }
            Applet::Mgmt => format!("{ma}.{mi}.{pa}").into_bytes(),
            Applet::Otp => vec![ma, mi, pa, 0x00, 0x00, 0x00],
            Applet::None => Vec::new(),
        })
    }

    // -- Management applet ----------------------------------------------

    fn mgmt(&mut self, cmd: &Command) -> Reply {
        match cmd.ins {
            // READ CONFIG: device info.
            0x1D => {
                let mut tlvs = Vec::new();
                // USB supported / enabled: OTP 0x01, U2F 0x02, OPENPGP 0x08,
                // PIV 0x10, OATH 0x20, FIDO2 0x200. We offer OTP + PIV.
                push_tlv(&mut tlvs, &[0x01], &[0x00, 0x11]);
                push_tlv(&mut tlvs, &[0x02], &self.cfg.serial.to_be_bytes());
                push_tlv(&mut tlvs, &[0x03], &[0x00, 0x11]);
                push_tlv(&mut tlvs, &[0x04], &[0x01]);
                push_tlv(&mut tlvs, &[0x05], &self.cfg.version);
                push_tlv(&mut tlvs, &[0x0A], &[0x00]);
                let mut out = vec![tlvs.len() as u8];
                out.extend_from_slice(&tlvs);
                Ok(out)
            }
            _ => Err(SW_INS_NOT_SUPPORTED),
        }
    }

    // -- OTP applet (serial for firmware 4 clients) ----------------------

    fn otp(&mut self, cmd: &Command) -> Reply {
        match (cmd.ins, cmd.p1) {
            (0x01, 0x10) => Ok(self.cfg.serial.to_be_bytes().to_vec()),
            (0x01, _) => Err(SW_WRONG_P1P2),
            _ => Err(SW_INS_NOT_SUPPORTED),
        }
    }

    // -- PIV applet --------------------------------------------------------

    fn piv(&mut self, cmd: &Command) -> Reply {
        match cmd.ins {
            0xFD => Ok(self.cfg.version.to_vec()),
            0xF8 => Ok(self.cfg.serial.to_be_bytes().to_vec()),
            0x20 => self.verify(cmd),
            0x24 => self.change_reference(cmd),
            0x2C => self.reset_retry(cmd),
            0xFA => self.set_pin_retries(cmd),
            0xFB => self.reset(),
            0xF7 => self.metadata(cmd),
            0xCB => self.get_data(cmd),
            0xDB => self.put_data(cmd),
            0x47 => self.generate(cmd),
            0xFE => self.import(cmd),
            0x87 => self.general_authenticate(cmd),
            0xF9 => self.attest(cmd),
            0xFF => self.set_mgmt_key(cmd),
            _ => Err(SW_INS_NOT_SUPPORTED),
        }
    }

    fn verify(&mut self, cmd: &Command) -> Reply {
        if cmd.p2 != 0x80 {
            return Err(SW_REF_NOT_FOUND);
        }
        match (cmd.p1, cmd.data.len()) {
            // Logout.
            (0xFF, 0) => {
                self.session.pin_ok = false;
                self.session.pin_always = false;
                Ok(Vec::new())
            }
            // Status query.
            (0x00, 0) => {
                if self.piv.pin.left == 0 {
                    Err(SW_BLOCKED)
                } else if self.session.pin_ok {
                    Ok(Vec::new())
                } else {
                    Err(sw_retries(self.piv.pin.left))
                }
            }
            (0x00, 8) => match self.piv.pin.check(&cmd.data) {
                Ok(()) => {
                    self.session.pin_ok = true;
                    self.session.pin_always = true;
                    Ok(Vec::new())
                }
                Err(sw) => {
                    self.session.pin_ok = false;
                    self.session.pin_always = false;
                    Err(sw)
                }
            },
            (0x00 | 0xFF, _) => Err(SW_WRONG_DATA),
            _ => Err(SW_WRONG_P1P2),
        }
    }

    fn change_reference(&mut self, cmd: &Command) -> Reply {
        if cmd.p1 != 0 {
            return Err(SW_WRONG_P1P2);
        }
        if cmd.data.len() != 16 {
            return Err(SW_WRONG_DATA);
        }
        let (old, new) = cmd.data.split_at(8);
        let new = unpad(new);
        let secret = match cmd.p2 {
            0x80 => &mut self.piv.pin,
            0x81 => &mut self.piv.puk,
            _ => return Err(SW_REF_NOT_FOUND),
        };
        secret.check(old)?;
        if !(6..=8).contains(&new.len()) {
            return Err(SW_WRONG_DATA);
        }
        secret.value = Zeroizing::new(new.to_vec());
        secret.default = false;
        if cmd.p2 == 0x80 {
            self.session.pin_ok = true;
        }
        Ok(Vec::new())
    }

    fn reset_retry(&mut self, cmd: &Command) -> Reply {
        if (cmd.p1, cmd.p2) != (0x00, 0x80) {
            return Err(SW_WRONG_P1P2);
        }
        if cmd.data.len() != 16 {
            return Err(SW_WRONG_DATA);
        }
        let (puk, new) = cmd.data.split_at(8);
        let new = unpad(new);
        self.piv.puk.check(puk)?;
        if !(6..=8).contains(&new.len()) {
            return Err(SW_WRONG_DATA);
        }
        self.piv.pin.value = Zeroizing::new(new.to_vec());
        self.piv.pin.left = self.piv.pin.max;
        self.piv.pin.default = false;
        Ok(Vec::new())
    }

    fn set_pin_retries(&mut self, cmd: &Command) -> Reply {
        if !self.session.mgmt_ok || !self.session.pin_ok {
            return Err(SW_SECURITY);
        }
        if cmd.p1 == 0 || cmd.p2 == 0 || cmd.p1 > 15 || cmd.p2 > 15 {
            return Err(SW_WRONG_P1P2);
        }
        // Like a YubiKey: PIN and PUK go back to their defaults.
        self.piv.pin = Secret::new(DEFAULT_PIN, cmd.p1);
        self.piv.puk = Secret::new(DEFAULT_PUK, cmd.p2);
        Ok(Vec::new())
    }

    fn reset(&mut self) -> Reply {
        if self.piv.pin.left != 0 || self.piv.puk.left != 0 {
            return Err(SW_CONDITIONS);
        }
        let keep_attestation = self.piv.slots.get(&0xF9).cloned();
        let keep_cert = self.piv.objects.get(&[0x5F, 0xFF, 0x01][..]).cloned();
        self.piv = PivState::factory(&self.cfg);
        if let Some(k) = keep_attestation {
            self.piv.slots.insert(0xF9, k);
        }
        if let Some(c) = keep_cert {
            self.piv.objects.insert(vec![0x5F, 0xFF, 0x01], c);
        }
        let applet = self.session.applet;
        self.session = Session {
            applet,
            ..Session::default()
        };
        Ok(Vec::new())
    }

    fn metadata(&mut self, cmd: &Command) -> Reply {
        if self.cfg.version < [5, 3, 0] {
            return Err(SW_INS_NOT_SUPPORTED);
        }
        if cmd.p1 != 0 {
            return Err(SW_WRONG_P1P2);
        }
        let mut out = Vec::new();
        match cmd.p2 {
            0x80 | 0x81 => {
                let s = if cmd.p2 == 0x80 {
                    &self.piv.pin
                } else {
                    &self.piv.puk
                };
                push_tlv(&mut out, &[0x01], &[alg::PIN]);
                push_tlv(&mut out, &[0x05], &[u8::from(s.default)]);
                push_tlv(&mut out, &[0x06], &[s.max, s.left]);
            }
            0x9B => {
                push_tlv(&mut out, &[0x01], &[self.piv.mgmt_alg]);
                let touch = if self.piv.mgmt_touch {
                    touch_policy::ALWAYS
                } else {
                    touch_policy::NEVER
                };
                push_tlv(&mut out, &[0x02], &[pin_policy::DEFAULT, touch]);
                push_tlv(&mut out, &[0x05], &[u8::from(self.piv.mgmt_default)]);
            }
            slot if is_key_slot(slot) => {
                let k = self.piv.slots.get(&slot).ok_or(SW_REF_NOT_FOUND)?;
                push_tlv(&mut out, &[0x01], &[k.key.alg()]);
                push_tlv(&mut out, &[0x02], &[k.pin_policy, k.touch_policy]);
                push_tlv(&mut out, &[0x03], &[k.origin]);
                let mut point = Vec::new();
                push_tlv(&mut point, &[0x86], &k.key.public_point());
                push_tlv(&mut out, &[0x04], &point);
            }
            _ => return Err(SW_REF_NOT_FOUND),
        }
        Ok(out)
    }

    fn get_data(&mut self, cmd: &Command) -> Reply {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(SW_WRONG_P1P2);
        }
        let tlvs = apdu::parse_tlvs(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let tag = match tlvs.as_slice() {
            [t] if t.tag == [0x5C] => t.value,
            _ => return Err(SW_WRONG_DATA),
        };
        if tag == [0x7E] {
            // Discovery object: PIV AID, PIN usage policy (PIN only).
            let mut inner = Vec::new();
            push_tlv(&mut inner, &[0x4F], AID_PIV);
            push_tlv(&mut inner, &[0x5F, 0x2F], &[0x40, 0x00]);
            let mut out = Vec::new();
            push_tlv(&mut out, &[0x7E], &inner);
            return Ok(out);
        }
        if tag == [0x5F, 0xC1, 0x09] && !self.session.pin_ok {
            return Err(SW_SECURITY);
        }
        let value = self.piv.objects.get(tag).ok_or(SW_NOT_FOUND)?;
        let mut out = Vec::new();
        push_tlv(&mut out, &[0x53], value);
        Ok(out)
    }

    fn put_data(&mut self, cmd: &Command) -> Reply {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(SW_WRONG_P1P2);
        }
        if !self.session.mgmt_ok {
            return Err(SW_SECURITY);
        }
        let tlvs = apdu::parse_tlvs(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let (tag, value) = match tlvs.as_slice() {
            [t, v] if t.tag == [0x5C] && v.tag == [0x53] => (t.value, v.value),
            _ => return Err(SW_WRONG_DATA),
        };
        let writable = matches!(tag, [0x5F, 0xC1, 0x01..=0x23] | [0x5F, 0xFF, 0x00..=0x15])
            || tag == [0x7F, 0x61];
        if !writable {
            return Err(SW_WRONG_DATA);
        }
        if value.len() > MAX_OBJECT {
            return Err(SW_NO_SPACE);
        }
        if value.is_empty() {
            self.piv.objects.remove(tag);
        } else {
            self.piv.objects.insert(tag.to_vec(), value.to_vec());
        }
        Ok(Vec::new())
    }

    fn policies(slot: u8, pin: u8, touch: u8) -> Result<(u8, u8), Sw> {
        let pin = match pin {
            pin_policy::DEFAULT => match slot {
                0x9C => pin_policy::ALWAYS,
                0x9E => pin_policy::NEVER,
                _ => pin_policy::ONCE,
            },
            p @ (pin_policy::NEVER | pin_policy::ONCE | pin_policy::ALWAYS) => p,
            _ => return Err(SW_WRONG_DATA),
        };
        let touch = match touch {
            touch_policy::DEFAULT => touch_policy::NEVER,
            t @ (touch_policy::NEVER | touch_policy::ALWAYS | touch_policy::CACHED) => t,
            _ => return Err(SW_WRONG_DATA),
        };
        Ok((pin, touch))
    }

    fn generate(&mut self, cmd: &Command) -> Reply {
        if cmd.p1 != 0 || !is_key_slot(cmd.p2) {
            return Err(SW_WRONG_P1P2);
        }
        if !self.session.mgmt_ok {
            return Err(SW_SECURITY);
        }
        let outer = apdu::parse_tlvs(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let templ = match outer.as_slice() {
            [t] if t.tag == [0xAC] => t.value,
            _ => return Err(SW_WRONG_DATA),
        };
        let inner = apdu::parse_tlvs(templ).ok_or(SW_WRONG_DATA)?;
        let algo = match apdu::find(&inner, &[0x80]) {
            Some([a]) => *a,
            _ => return Err(SW_WRONG_DATA),
        };
        let key = SlotKey::generate(algo).ok_or(SW_WRONG_DATA)?;
        let point = key.public_point();
        self.install(cmd.p2, &inner, key, 1)?;
        let mut inner = Vec::new();
        push_tlv(&mut inner, &[0x86], &point);
        let mut out = Vec::new();
        push_tlv(&mut out, &[0x7F, 0x49], &inner);
        Ok(out)
    }

    fn import(&mut self, cmd: &Command) -> Reply {
        if !is_key_slot(cmd.p2) {
            return Err(SW_WRONG_P1P2);
        }
        if !self.session.mgmt_ok {
            return Err(SW_SECURITY);
        }
        let len = SlotKey::scalar_len(cmd.p1).ok_or(SW_WRONG_P1P2)?;
        let tlvs = apdu::parse_tlvs(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let scalar = apdu::find(&tlvs, &[0x06]).ok_or(SW_WRONG_DATA)?;
        if scalar.len() != len {
            return Err(SW_WRONG_DATA);
        }
        let key = SlotKey::from_scalar(cmd.p1, scalar).ok_or(SW_WRONG_DATA)?;
        self.install(cmd.p2, &tlvs, key, 2)?;
        Ok(Vec::new())
    }

    /// Puts `key` in `slot` with the PIN and touch policies that tags 0xAA
    /// and 0xAB of a GENERATE or IMPORT ask for; `origin` is 1 for a key
    /// generated on the card, 2 for an imported one.
    fn install(
        &mut self,
        slot: u8,
        tlvs: &[apdu::Tlv<'_>],
        key: SlotKey,
        origin: u8,
    ) -> Result<(), Sw> {
        let pin = one_byte(apdu::find(tlvs, &[0xAA]))?;
        let touch = one_byte(apdu::find(tlvs, &[0xAB]))?;
        let (pin_policy, touch_policy) = Self::policies(slot, pin, touch)?;
        self.piv.slots.insert(
            slot,
            KeySlot {
                key,
                pin_policy,
                touch_policy,
                origin,
            },
        );
        Ok(())
    }

    fn general_authenticate(&mut self, cmd: &Command) -> Reply {
        let outer = apdu::parse_tlvs(&cmd.data).ok_or(SW_WRONG_DATA)?;
        let dyn_auth = match outer.as_slice() {
            [t] if t.tag == [0x7C] => t.value,
            _ => return Err(SW_WRONG_DATA),
        };
        let inner = apdu::parse_tlvs(dyn_auth).ok_or(SW_WRONG_DATA)?;
        if cmd.p2 == 0x9B {
            return self.mgmt_auth(cmd.p1, &inner);
        }
        if !is_key_slot(cmd.p2) {
            return Err(SW_WRONG_P1P2);
        }
        let slot = self.piv.slots.get(&cmd.p2).ok_or(SW_REF_NOT_FOUND)?;
        if slot.key.alg() != cmd.p1 {
            return Err(SW_WRONG_DATA);
        }
        let (pin, touch) = (slot.pin_policy, slot.touch_policy);
        if apdu::find(&inner, &[0x82]) != Some(&[]) {
            return Err(SW_WRONG_DATA);
        }
        let (input, ecdh) = match (apdu::find(&inner, &[0x81]), apdu::find(&inner, &[0x85])) {
            (Some(d), None) => (d, false),
            (None, Some(p)) => (p, true),
            _ => return Err(SW_WRONG_DATA),
        };
        let field = SlotKey::scalar_len(cmd.p1).ok_or(SW_WRONG_DATA)?;
        if (!ecdh && input.len() > field) || (ecdh && input.len() != 2 * field + 1) {
            return Err(SW_WRONG_DATA);
        }
        match pin {
            pin_policy::NEVER => {}
            pin_policy::ALWAYS if self.session.pin_always => {}
            pin_policy::ONCE if self.session.pin_ok => {}
            _ => return Err(SW_SECURITY),
        }
        self.touch_check(touch)?;
        if pin == pin_policy::ALWAYS {
            self.session.pin_always = false;
        }
        let slot = self.piv.slots.get(&cmd.p2).ok_or(SW_REF_NOT_FOUND)?;
        let result = if ecdh {
            slot.key.ecdh(input).ok_or(SW_WRONG_DATA)?.to_vec()
        } else {
            slot.key.sign(input).ok_or(apdu::SW_UNKNOWN)?
        };
        let mut inner = Vec::new();
        push_tlv(&mut inner, &[0x82], &result);
        let mut out = Vec::new();
        push_tlv(&mut out, &[0x7C], &inner);
        Ok(out)
    }

    fn touch_check(&mut self, touch: u8) -> Result<(), Sw> {
        if touch == touch_policy::NEVER {
            return Ok(());
        }
        self.touches += 1;
        match self.touch {
            Touch::Approve => Ok(()),
            Touch::Deny => Err(SW_SECURITY),
            Touch::Delay(d) => {
                std::thread::sleep(d);
                Ok(())
            }
        }
    }

    fn mgmt_auth(&mut self, algo: u8, inner: &[apdu::Tlv<'_>]) -> Reply {
        if algo != self.piv.mgmt_alg {
            self.session.witness = None;
            return Err(SW_WRONG_DATA);
        }
        let bl = keys::mgmt_block_len(algo);
        let key = self.piv.mgmt_key.clone();
        let crypt = |block: &mut [u8], enc: bool| -> Result<(), Sw> {
            keys::mgmt_crypt(algo, &key, block, enc).ok_or(SW_WRONG_DATA)
        };
        let witness = apdu::find(inner, &[0x80]);
        let challenge = apdu::find(inner, &[0x81]);
        let response = apdu::find(inner, &[0x82]);
        let mut out_inner = Vec::new();
        match (witness, challenge, response) {
            // Step 1 of mutual auth: the card's encrypted witness.
            (Some([]), None, _) => {
                self.session.mgmt_ok = false;
                if self.piv.mgmt_touch {
                    self.touch_check(touch_policy::ALWAYS)?;
                }
                let mut w = Zeroizing::new(vec![0u8; bl]);
                keys::random(&mut w);
                let mut enc = w.clone();
                crypt(&mut enc, true)?;
                self.session.witness = Some(w);
                push_tlv(&mut out_inner, &[0x80], &enc);
            }
            // Step 2: decrypted witness + host challenge.
            (Some(w), Some(c), _) if !w.is_empty() => {
                let expected = self.session.witness.take().ok_or(SW_CONDITIONS)?;
                if w.len() != bl || c.len() != bl || !bool::from(w.ct_eq(expected.as_slice())) {
                    self.session.mgmt_ok = false;
                    return Err(SW_SECURITY);
                }
                let mut enc = c.to_vec();
                crypt(&mut enc, true)?;
                self.session.mgmt_ok = true;
                push_tlv(&mut out_inner, &[0x82], &enc);
            }
            // Single authentication: card challenge.
            (None, Some([]), None) => {
                self.session.mgmt_ok = false;
                let mut c = Zeroizing::new(vec![0u8; bl]);
                keys::random(&mut c);
                push_tlv(&mut out_inner, &[0x81], &c);
                self.session.challenge = Some(c);
            }
            // Single authentication: the host's encrypted challenge.
            (None, None, Some(r)) => {
                let mut expected = self.session.challenge.take().ok_or(SW_CONDITIONS)?;
                crypt(&mut expected, true)?;
                if !bool::from(r.ct_eq(expected.as_slice())) {
                    return Err(SW_SECURITY);
                }
                self.session.mgmt_ok = true;
                return Ok(Vec::new());
            }
            _ => return Err(SW_WRONG_DATA),
        }
        let mut out = Vec::new();
        push_tlv(&mut out, &[0x7C], &out_inner);
        Ok(out)
    }

    fn attest(&mut self, cmd: &Command) -> Reply {
        if !is_key_slot(cmd.p1) || cmd.p1 == 0xF9 {
            return Err(SW_WRONG_P1P2);
        }
        let slot = self.piv.slots.get(&cmd.p1).ok_or(SW_REF_NOT_FOUND)?;
        if slot.origin != 1 {
            return Err(SW_WRONG_DATA);
        }
        let signer = match self.piv.slots.get(&0xF9).map(|s| &s.key) {
            Some(SlotKey::P256(k)) => k.clone(),
            _ => return Err(SW_CONDITIONS),
        };
        let subject = format!("YubiKey PIV Attestation {:02x}", cmd.p1);
        Ok(keys::certificate(
            &keys::CertFields {
                issuer_cn: "keyward simulated YubiKey PIV Attestation",
                subject_cn: &subject,
                subject_key: &slot.key,
                yubico: Some((
                    self.cfg.version,
                    self.cfg.serial,
                    [slot.pin_policy, slot.touch_policy],
                )),
            },
            &signer,
        ))
    }

    fn set_mgmt_key(&mut self, cmd: &Command) -> Reply {
        if cmd.p1 != 0xFF || !(cmd.p2 == 0xFF || cmd.p2 == 0xFE) {
            return Err(SW_WRONG_P1P2);
        }
        if !self.session.mgmt_ok {
            return Err(SW_SECURITY);
        }
        let [algo, 0x9B, len, key @ ..] = cmd.data.as_slice() else {
            return Err(SW_WRONG_DATA);
        };
        let expected = keys::mgmt_key_len(*algo).ok_or(SW_WRONG_DATA)?;
        if usize::from(*len) != expected || key.len() != expected {
            return Err(SW_WRONG_DATA);
        }
        if *algo != alg::TDES && self.cfg.version < [5, 4, 0] {
            return Err(SW_WRONG_DATA);
        }
        self.piv.mgmt_alg = *algo;
        self.piv.mgmt_key = Zeroizing::new(key.to_vec());
        self.piv.mgmt_touch = cmd.p2 == 0xFE;
        self.piv.mgmt_default = false;
        Ok(Vec::new())
    }
}

fn one_byte(v: Option<&[u8]>) -> Result<u8, Sw> {
    match v {
        None => Ok(0),
        Some([b]) => Ok(*b),
        Some(_) => Err(SW_WRONG_DATA),
    }
}

/// Whether `slot` holds asymmetric keys (9A 9C 9D 9E, retired 82-95, F9).
pub fn is_key_slot(slot: u8) -> bool {
    matches!(slot, 0x9A | 0x9C | 0x9D | 0x9E | 0x82..=0x95 | 0xF9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sw(resp: &[u8]) -> Sw {
        let n = resp.len();
        Sw::from_be_bytes([resp[n - 2], resp[n - 1]])
    }

    fn piv_card() -> Card {
        let mut c = Card::new(CardConfig::default());
        assert_eq!(sw(&c.process(&[0, 0xA4, 4, 0, 5, 0xA0, 0, 0, 3, 8])), SW_OK);
        c
    }

    fn mgmt_login(c: &mut Card) {
        let r = c.process(&[0, 0x87, 3, 0x9B, 4, 0x7C, 2, 0x80, 0]);
        assert_eq!(sw(&r), SW_OK);
        let mut w = r[4..12].to_vec();
        keys::mgmt_crypt(alg::TDES, &DEFAULT_MGMT_KEY, &mut w, false).expect("3des");
        let mut apdu = vec![0, 0x87, 3, 0x9B, 22, 0x7C, 20, 0x80, 8];
        apdu.extend_from_slice(&w);
        apdu.extend_from_slice(&[0x81, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        let r = c.process(&apdu);
        assert_eq!(sw(&r), SW_OK);
        let mut expect = vec![1, 2, 3, 4, 5, 6, 7, 8];
        keys::mgmt_crypt(alg::TDES, &DEFAULT_MGMT_KEY, &mut expect, true).expect("3des");
        assert_eq!(&r[4..12], expect.as_slice());
    }

    #[test]
    fn unknown_applet_ins_and_cla() {
        let mut c = Card::new(CardConfig::default());
        assert_eq!(sw(&c.process(&[0, 0xFD, 0, 0])), SW_INS_NOT_SUPPORTED);
        assert_eq!(
            sw(&c.process(&[0, 0xA4, 4, 0, 5, 1, 2, 3, 4, 5])),
            SW_NOT_FOUND
        );
        let mut c = piv_card();
        assert_eq!(sw(&c.process(&[0, 0x99, 0, 0])), SW_INS_NOT_SUPPORTED);
        assert_eq!(sw(&c.process(&[0x80, 0xFD, 0, 0])), SW_CLA_NOT_SUPPORTED);
        assert_eq!(sw(&c.process(&[0, 0xFD])), SW_WRONG_LENGTH);
        assert_eq!(c.process(&[0, 0xFD, 0, 0, 0]), vec![5, 4, 3, 0x90, 0]);
    }

    #[test]
    fn pin_retries_block_and_reset() {
        let mut c = piv_card();
        let wrong = [
            0, 0x20, 0, 0x80, 8, b'9', b'9', b'9', b'9', b'9', b'9', 0xFF, 0xFF,
        ];
        assert_eq!(sw(&c.process(&wrong)), 0x63C2);
        assert_eq!(sw(&c.process(&[0, 0x20, 0, 0x80])), 0x63C2);
        assert_eq!(sw(&c.process(&wrong)), 0x63C1);
        assert_eq!(sw(&c.process(&wrong)), SW_BLOCKED);
        assert_eq!(sw(&c.process(&wrong)), SW_BLOCKED);
        // RESET refused while the PUK still works.
        assert_eq!(sw(&c.process(&[0, 0xFB, 0, 0])), SW_CONDITIONS);
        let bad_puk = [
            0, 0x2C, 0, 0x80, 16, b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'1', b'1', b'1',
            b'1', b'1', b'1', 0xFF, 0xFF,
        ];
        for _ in 0..3 {
            c.process(&bad_puk);
        }
        assert_eq!(sw(&c.process(&[0, 0xFB, 0, 0])), SW_OK);
        let right = [
            0, 0x20, 0, 0x80, 8, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
        ];
        assert_eq!(sw(&c.process(&right)), SW_OK);
    }

    #[test]
    fn command_and_response_chaining() {
        let mut c = piv_card();
        mgmt_login(&mut c);
        // PUT DATA of a 600-byte object in three chained APDUs.
        let mut data = vec![0x5C, 3, 0x5F, 0xC1, 0x05, 0x53, 0x82, 0x02, 0x58];
        data.extend((0..600u32).map(|i| i as u8));
        let chunks: Vec<&[u8]> = data.chunks(255).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let cla = if i + 1 < chunks.len() { 0x10 } else { 0 };
            let mut apdu = vec![cla, 0xDB, 0x3F, 0xFF, chunk.len() as u8];
            apdu.extend_from_slice(chunk);
            assert_eq!(sw(&c.process(&apdu)), SW_OK);
        }
        // GET DATA: 604 bytes back as 256 + 61xx, 256 + 61xx, rest + 9000.
        let r = c.process(&[0, 0xCB, 0x3F, 0xFF, 5, 0x5C, 3, 0x5F, 0xC1, 0x05, 0]);
        assert_eq!((r.len(), sw(&r)), (258, 0x6100));
        let mut all = r[..256].to_vec();
        let r = c.process(&[0, 0xC0, 0, 0, 0]);
        assert_eq!((r.len(), sw(&r)), (258, 0x615C));
        all.extend_from_slice(&r[..256]);
        let r = c.process(&[0, 0xC0, 0, 0, 0]);
        assert_eq!((r.len(), sw(&r)), (0x5C + 2, SW_OK));
        all.extend_from_slice(&r[..r.len() - 2]);
        assert_eq!(&all[..4], &[0x53, 0x82, 0x02, 0x58]);
        assert_eq!(&all[4..], &data[9..]);
        // Extended-length APDU.
        let r = c.process(&[
            0, 0xCB, 0x3F, 0xFF, 0, 0, 5, 0x5C, 3, 0x5F, 0xC1, 0x05, 0, 0,
        ]);
        assert_eq!(sw(&r), 0x6100);
        // Oversized object.
        let mut big = vec![0x5C, 3, 0x5F, 0xC1, 0x05, 0x53, 0x82, 0x10, 0x00];
        big.extend(std::iter::repeat_n(0u8, 0x1000));
        let mut apdu = vec![0, 0xDB, 0x3F, 0xFF, 0];
        apdu.extend_from_slice(&(big.len() as u16).to_be_bytes());
        apdu.extend_from_slice(&big);
        assert_eq!(sw(&c.process(&apdu)), SW_NO_SPACE);
    }

    #[test]
    fn security_conditions() {
        let mut c = piv_card();
        let gen_apdu = [0, 0x47, 0, 0x9A, 5, 0xAC, 3, 0x80, 1, 0x11];
        assert_eq!(sw(&c.process(&gen_apdu)), SW_SECURITY);
        mgmt_login(&mut c);
        assert_eq!(sw(&c.process(&gen_apdu)), 0x9000);
        let mut sign = vec![0, 0x87, 0x11, 0x9A, 38, 0x7C, 36, 0x82, 0, 0x81, 32];
        sign.extend_from_slice(&[7u8; 32]);
        assert_eq!(sw(&c.process(&sign)), SW_SECURITY);
        let right = [
            0, 0x20, 0, 0x80, 8, b'1', b'2', b'3', b'4', b'5', b'6', 0xFF, 0xFF,
        ];
        assert_eq!(sw(&c.process(&right)), SW_OK);
        assert_eq!(sw(&c.process(&sign)), SW_OK);
        // Wrong algorithm for the slot, empty slot, not a key slot.
        sign[2] = 0x14;
        assert_eq!(sw(&c.process(&sign)), SW_WRONG_DATA);
        sign[2] = 0x11;
        sign[3] = 0x9D;
        assert_eq!(sw(&c.process(&sign)), SW_REF_NOT_FOUND);
        sign[3] = 0x01;
        assert_eq!(sw(&c.process(&sign)), SW_WRONG_P1P2);
    }

    #[test]
    fn touch_policy_approve_deny() {
        let mut c = piv_card();
        mgmt_login(&mut c);
        // P-256 in 9E, PIN never, touch always.
        let g = [
            0, 0x47, 0, 0x9E, 11, 0xAC, 9, 0x80, 1, 0x11, 0xAA, 1, 1, 0xAB, 1, 2,
        ];
        assert_eq!(sw(&c.process(&g)), SW_OK);
        let mut sign = vec![0, 0x87, 0x11, 0x9E, 38, 0x7C, 36, 0x82, 0, 0x81, 32];
        sign.extend_from_slice(&[7u8; 32]);
        assert_eq!(sw(&c.process(&sign)), SW_OK);
        c.set_touch(Touch::Deny);
        assert_eq!(sw(&c.process(&sign)), SW_SECURITY);
        c.set_touch(Touch::Delay(Duration::from_millis(30)));
        let t = std::time::Instant::now();
        assert_eq!(sw(&c.process(&sign)), SW_OK);
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert_eq!(c.touches(), 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random APDUs (also after SELECT PIV and a management login)
        /// always give a well-formed response and never panic.
        #[test]
        fn never_panics(apdus in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                (any::<u8>(), any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..80))
                    .prop_map(|(ins, p1, p2, data)| {
                        let mut a = vec![0, ins, p1, p2, data.len() as u8];
                        a.extend_from_slice(&data);
                        a
                    }),
                (prop_oneof![Just(0x87u8), Just(0x47), Just(0xDB), Just(0xCB), Just(0xF7), Just(0xF9), Just(0xFE), Just(0xFF), Just(0x20), Just(0x24), Just(0x2C)],
                 any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..80), any::<bool>())
                    .prop_map(|(ins, p1, p2, data, chained)| {
                        let mut a = vec![if chained { 0x10 } else { 0 }, ins, p1, p2, data.len() as u8];
                        a.extend_from_slice(&data);
                        a
                    }),
            ],
            1..20,
        )) {
            let mut c = piv_card();
            mgmt_login(&mut c);
            for a in &apdus {
                let r = c.process(a);
                prop_assert!(r.len() >= 2 && r.len() <= 258);
            }
        }
    }
}
