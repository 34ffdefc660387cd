//! The conformance suite against the TPM 2.0 backend, on a swtpm of its own
//! per test (needs swtpm, swtpm-tools and tpm2-tools; see
//! `keyward_tests::fixtures::tpm` for how each hook maps to the TPM).

keyward_tests::conformance_suite!(keyward_tests::fixtures::tpm::TpmFixture::new());
