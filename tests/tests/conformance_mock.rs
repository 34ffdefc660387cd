//! The conformance suite against the in-process mock token
//! (keyward-hw-mocks), which supports every fault-injection hook.

keyward_tests::conformance_suite!(keyward_tests::fixtures::MockFixture::new());
