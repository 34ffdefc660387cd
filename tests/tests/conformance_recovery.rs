//! The conformance suite against the recovery-key protector.

keyward_tests::conformance_suite!(keyward_tests::fixtures::RecoveryFixture::new());
