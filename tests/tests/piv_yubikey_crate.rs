//! The unmodified `yubikey` crate (=0.9.0-rc.0) against the PIV simulator
//! on the real pcscd + vpcd stack. Each test starts its own pcscd and card;
//! the fixture's machine-wide lock serializes them.

use keyward_hw_mocks::piv::{CardConfig, PivFixture};
use yubikey::YubiKey;

fn fixture() -> PivFixture {
    PivFixture::start(CardConfig::default()).expect("pcscd + vpcd + simulator")
}

#[test]
fn opens_and_reads_version_and_serial() {
    let _f = fixture();
    let yk = YubiKey::open().expect("open");
    assert_eq!(yk.version().to_string(), "5.4.3");
    assert_eq!(u32::from(yk.serial()), 12_345_678);
}
