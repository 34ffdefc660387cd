//! ISO 7816-4 command APDU parsing and status words.
//!
//! Accepts the four cases in short and extended form. A 5-byte APDU whose
//! last byte is `00` is case 2 (`Le` = 256), which is also how clients that
//! always send an `Lc` byte express "no data" (the `yubikey` crate does).

/// A status word (SW1 SW2).
pub type Sw = u16;

/// Success.
pub const SW_OK: Sw = 0x9000;
/// Wrong length (Lc/Le inconsistent with the APDU, or data of the wrong size).
pub const SW_WRONG_LENGTH: Sw = 0x6700;
/// Security status not satisfied (PIN or management key needed).
pub const SW_SECURITY: Sw = 0x6982;
/// Authentication method blocked (PIN or PUK retries exhausted).
pub const SW_BLOCKED: Sw = 0x6983;
/// Conditions of use not satisfied.
pub const SW_CONDITIONS: Sw = 0x6985;
/// Incorrect parameters in the data field.
pub const SW_WRONG_DATA: Sw = 0x6A80;
/// File or application not found.
pub const SW_NOT_FOUND: Sw = 0x6A82;
/// Not enough memory.
pub const SW_NO_SPACE: Sw = 0x6A84;
/// Incorrect P1 P2.
pub const SW_WRONG_P1P2: Sw = 0x6A86;
/// Referenced data (key, PIN) not found.
pub const SW_REF_NOT_FOUND: Sw = 0x6A88;
/// Wrong parameters P1 P2 (offset outside the object).
pub const SW_WRONG_PARAMS: Sw = 0x6B00;
/// Instruction not supported.
pub const SW_INS_NOT_SUPPORTED: Sw = 0x6D00;
/// Class not supported.
pub const SW_CLA_NOT_SUPPORTED: Sw = 0x6E00;
/// No precise diagnosis.
pub const SW_UNKNOWN: Sw = 0x6F00;

/// `63Cx`: verification failed, `x` retries left.
pub fn sw_retries(left: u8) -> Sw {
    0x63C0 | Sw::from(left.min(15))
}

/// A parsed command APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (empty when `Lc` is absent).
    pub data: Vec<u8>,
    /// Expected response length (`None`: absent; 256 or 65536 for `00`).
    pub le: Option<usize>,
    /// Whether the APDU used extended length fields.
    pub extended: bool,
}

impl Command {
    /// Whether the command-chaining bit (CLA bit 5, `0x10`) is set.
    pub fn chained(&self) -> bool {
        self.cla & 0x10 != 0
    }
}

/// Parses a command APDU. Never panics; malformed input gives `6700`.
pub fn parse(raw: &[u8]) -> Result<Command, Sw> {
    let [cla, ins, p1, p2, rest @ ..] = raw else {
        return Err(SW_WRONG_LENGTH);
    };
    let mut cmd = Command {
        cla: *cla,
        ins: *ins,
        p1: *p1,
        p2: *p2,
        data: Vec::new(),
        le: None,
        extended: false,
    };
    match rest {
        // Case 1.
        [] => {}
        // Case 2 short (also "Lc = 0, no data").
        // (Lenient: `Lc = 00` followed by `Le` is the same.)
        [le] | [0, le] => cmd.le = Some(short_le(*le)),
        // Case 2 extended.
        [0, hi, lo] => {
            cmd.extended = true;
            cmd.le = Some(ext_le(*hi, *lo));
        }
        [0, hi, lo, body @ ..] => {
            cmd.extended = true;
            let lc = usize::from(u16::from_be_bytes([*hi, *lo]));
            if lc == 0 {
                return Err(SW_WRONG_LENGTH);
            }
            if body.len() == lc {
                cmd.data = body.to_vec();
            } else if body.len() == lc + 2 {
                cmd.data = body[..lc].to_vec();
                cmd.le = Some(ext_le(body[lc], body[lc + 1]));
            } else {
                return Err(SW_WRONG_LENGTH);
            }
        }
        [lc, body @ ..] => {
            let lc = usize::from(*lc);
            if body.len() == lc {
                cmd.data = body.to_vec();
            } else if body.len() == lc + 1 {
                cmd.data = body[..lc].to_vec();
                cmd.le = Some(short_le(body[lc]));
            } else {
                return Err(SW_WRONG_LENGTH);
            }
        }
    }
    Ok(cmd)
}

fn short_le(le: u8) -> usize {
    if le == 0 { 256 } else { usize::from(le) }
}

fn ext_le(hi: u8, lo: u8) -> usize {
    match u16::from_be_bytes([hi, lo]) {
        0 => 65536,
        n => usize::from(n),
    }
}

/// Appends `tag`, a BER length and `value` to `out`.
pub fn push_tlv(out: &mut Vec<u8>, tag: &[u8], value: &[u8]) {
    out.extend_from_slice(tag);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// Appends a BER-TLV length.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        let len = u16::try_from(len).expect("TLV values are under 64 KiB");
        out.push(0x82);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// One BER-TLV element: tag bytes and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The tag (1 or 2 bytes; multi-byte tags start with `xx11111`).
    pub tag: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

/// Parses a sequence of BER-TLVs; `None` if malformed (truncated, bad length).
pub fn parse_tlvs(mut data: &[u8]) -> Option<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (tlv, rest) = parse_one(data)?;
        out.push(tlv);
        data = rest;
    }
    Some(out)
}

/// Parses one BER-TLV and returns it with the remaining input.
pub fn parse_one(data: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let first = *data.first()?;
    let mut tag_len = 1;
    if first & 0x1F == 0x1F {
        // Multi-byte tag: continuation bytes have bit 8 set.
        loop {
            let b = *data.get(tag_len)?;
            tag_len += 1;
            if b & 0x80 == 0 || tag_len > 3 {
                break;
            }
        }
    }
    let (tag, rest) = data.split_at(tag_len);
    let (len, rest) = match *rest.first()? {
        n @ 0..=0x7F => (usize::from(n), &rest[1..]),
        0x81 => (usize::from(*rest.get(1)?), &rest[2..]),
        0x82 => (
            usize::from(u16::from_be_bytes([*rest.get(1)?, *rest.get(2)?])),
            rest.get(3..)?,
        ),
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    Some((Tlv { tag, value }, rest))
}

/// The value of the first TLV with `tag` in `tlvs`.
pub fn find<'a>(tlvs: &[Tlv<'a>], tag: &[u8]) -> Option<&'a [u8]> {
    tlvs.iter().find(|t| t.tag == tag).map(|t| t.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_short_and_extended() {
        let c = parse(&[0, 0xFD, 0, 0]).expect("case 1");
        assert_eq!((c.data.len(), c.le), (0, None));
        let c = parse(&[0, 0xFD, 0, 0, 0]).expect("case 2 / lone 00");
        assert_eq!((c.data.len(), c.le), (0, Some(256)));
        let c = parse(&[0, 0xA4, 4, 0, 2, 0xA0, 0]).expect("case 3");
        assert_eq!((c.data, c.le), (vec![0xA0, 0], None));
        let c = parse(&[0, 0xA4, 4, 0, 1, 0xA0, 0x10]).expect("case 4");
        assert_eq!((c.data, c.le), (vec![0xA0], Some(16)));
        let c = parse(&[0, 0xCB, 0x3F, 0xFF, 0, 0, 1, 0x5C, 0, 0]).expect("case 4E");
        assert_eq!((c.data, c.le, c.extended), (vec![0x5C], Some(65536), true));
        let c = parse(&[0, 0xCB, 0x3F, 0xFF, 0, 1, 0]).expect("case 2E");
        assert_eq!(c.le, Some(256));
        assert_eq!(parse(&[0, 1, 2]), Err(SW_WRONG_LENGTH));
        assert_eq!(parse(&[0, 1, 2, 3, 5, 1]), Err(SW_WRONG_LENGTH));
        assert_eq!(parse(&[0, 1, 2, 3, 0, 0, 0, 1]), Err(SW_WRONG_LENGTH));
    }

    #[test]
    fn tlv_round_trip() {
        let mut v = Vec::new();
        push_tlv(&mut v, &[0x5C], &[0x5F, 0xC1, 0x05]);
        push_tlv(&mut v, &[0x53], &[7u8; 300]);
        push_tlv(&mut v, &[0x7F, 0x49], &[1u8; 130]);
        let t = parse_tlvs(&v).expect("well formed");
        assert_eq!(t.len(), 3);
        assert_eq!(find(&t, &[0x53]).map(<[u8]>::len), Some(300));
        assert_eq!(find(&t, &[0x7F, 0x49]).map(<[u8]>::len), Some(130));
        assert!(parse_tlvs(&[0x53, 0x82, 0x01]).is_none());
        assert!(parse_tlvs(&[0x53, 0x05, 1]).is_none());
        assert!(parse_tlvs(&[0x5F]).is_none());
    }
}
