//! The conformance suite against the PKCS#11 backend on SoftHSM2, once per
//! mode. Every test runs in a child process with a SoftHSM environment of
//! its own (SoftHSM reads its configuration once per process); see
//! `keyward_tests::fixtures::pkcs11` for how each hook maps to SoftHSM.

/// `mode=ecdh`: a P-256 key pair on the token.
mod ecdh {
    keyward_tests::conformance_suite!(
        keyward_tests::fixtures::pkcs11::Pkcs11Fixture::ecdh(),
        run_with = keyward_tests::fixtures::pkcs11::in_softhsm
    );
}

/// `mode=aes-gcm` (with `sign=ed25519`): an AES-256 key on the token.
mod aes_gcm {
    keyward_tests::conformance_suite!(
        keyward_tests::fixtures::pkcs11::Pkcs11Fixture::aes_gcm(),
        run_with = keyward_tests::fixtures::pkcs11::in_softhsm
    );
}
