//! The conformance suite against the YubiKey backend on the PIV simulator
//! (pcscd + vpcd). Each test starts its own pcscd and card; the nextest
//! `piv` group and the fixture's lock serialize them.

keyward_tests::conformance_suite!(keyward_tests::yubikey_fixture::YubikeyFixture::new());
