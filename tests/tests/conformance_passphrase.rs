//! The conformance suite against the passphrase protector, with the
//! smallest Argon2 cost allowed so that it stays fast.

keyward_tests::conformance_suite!(keyward_tests::fixtures::PassphraseFixture::new());
