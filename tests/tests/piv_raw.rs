//! Bad input through the real PC/SC stack: malformed APDUs, wrong lengths,
//! unknown applets and instructions, oversized data. The card answers with
//! the right status word and keeps working.

use std::ffi::CString;

use keyward_hw_mocks::piv::{CardConfig, PivFixture};

fn sw(r: &[u8]) -> u16 {
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

#[test]
fn bad_apdus_get_the_right_status_words() {
    let f = PivFixture::start(CardConfig::default()).expect("fixture");
    let ctx = pcsc::Context::establish(pcsc::Scope::System).expect("pcsc");
    let name = CString::new(f.card.reader_name()).expect("name");
    let card = ctx
        .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::T1)
        .expect("connect");
    let mut buf = vec![0u8; 70_000];
    let mut tx = |apdu: &[u8]| -> Vec<u8> {
        card.transmit(apdu, &mut buf)
            .unwrap_or_else(|e| panic!("transmit {apdu:02x?}: {e}"))
            .to_vec()
    };
    // Before any SELECT: no applet.
    assert_eq!(sw(&tx(&[0, 0xFD, 0, 0, 0])), 0x6D00);
    // Unknown applet.
    assert_eq!(sw(&tx(&[0, 0xA4, 4, 0, 5, 0xD2, 0x76, 0, 1, 0x24])), 0x6A82);
    // PIV (partial AID) → application property template.
    let r = tx(&[0, 0xA4, 4, 0, 5, 0xA0, 0, 0, 3, 8]);
    assert_eq!((r[0], sw(&r)), (0x61, 0x9000));
    // Unknown INS, unsupported CLA.
    assert_eq!(sw(&tx(&[0, 0x42, 0, 0, 0])), 0x6D00);
    assert_eq!(sw(&tx(&[0x80, 0xFD, 0, 0, 0])), 0x6E00);
    // Lc larger than the data.
    assert_eq!(sw(&tx(&[0, 0x20, 0, 0x80, 8, 1, 2, 3])), 0x6700);
    // VERIFY with a 3-byte PIN block, wrong key reference.
    assert_eq!(sw(&tx(&[0, 0x20, 0, 0x80, 3, 1, 2, 3])), 0x6A80);
    assert_eq!(sw(&tx(&[0, 0x20, 0, 0x99, 0])), 0x6A88);
    // GET DATA of a missing object, malformed tag list.
    assert_eq!(
        sw(&tx(&[0, 0xCB, 0x3F, 0xFF, 5, 0x5C, 3, 0x5F, 0xC1, 0x05, 0])),
        0x6A82
    );
    assert_eq!(sw(&tx(&[0, 0xCB, 0x3F, 0xFF, 3, 0x5C, 9, 0x5F, 0])), 0x6A80);
    // Without authentication: security status not satisfied.
    assert_eq!(
        sw(&tx(&[0, 0x47, 0, 0x9A, 5, 0xAC, 3, 0x80, 1, 0x11])),
        0x6982
    );
    // Empty slot, no key.
    let mut sign = vec![0, 0x87, 0x11, 0x9A, 38, 0x7C, 36, 0x82, 0, 0x81, 32];
    sign.extend_from_slice(&[7u8; 32]);
    assert_eq!(sw(&tx(&sign)), 0x6A88);
    // Metadata of an empty slot.
    assert_eq!(sw(&tx(&[0, 0xF7, 0, 0x9A, 0])), 0x6A88);
    // Extended-length APDU with 4000 bytes of garbage data (PUT DATA: the
    // management key check comes first).
    let mut ext = vec![0, 0xDB, 0x3F, 0xFF, 0, 0x0F, 0xA0];
    ext.extend(std::iter::repeat_n(0xEE, 4000));
    assert_eq!(sw(&tx(&ext)), 0x6982);
    // GET RESPONSE with nothing pending.
    assert_eq!(sw(&tx(&[0, 0xC0, 0, 0, 0])), 0x6985);
    // And the card still works.
    assert_eq!(tx(&[0, 0xFD, 0, 0, 0]), vec![5, 4, 3, 0x90, 0]);
    assert_eq!(tx(&[0, 0xF8, 0, 0, 0]), vec![0, 0xBC, 0x61, 0x4E, 0x90, 0]);
}
