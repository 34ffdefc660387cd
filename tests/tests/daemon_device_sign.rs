//! `POST /v1/device/sign` on SoftHSM2: the daemon unlocked with a PKCS#11
//! token signs with the token's key through the session the unlock opened
//! (no PIN per signature), the signature verifies with openssl, a locked
//! daemon refuses, and a daemon unlocked another way asks for the PIN
//! (`428`) rather than guessing one. Needs `softhsm2` and `openssl`.

use std::process::Command;

use keyward_hw_mocks::softhsm::{self, SoftHsmToken};
use keyward_tests::daemon::{Daemon, PASSPHRASE, Store, assert_ok, b64, code, unb64};
use serde_json::json;

#[test]
fn the_daemon_signs_with_the_token_it_was_unlocked_with() {
    softhsm::isolated(
        "the_daemon_signs_with_the_token_it_was_unlocked_with",
        |_hsm| {
            let token = SoftHsmToken::new("daemon-signer").expect("SoftHSM token");
            let store = Store::new();
            // Protector 3 (recovery 1, passphrase 2): the token, ECDH mode.
            let uri = token.uri();
            store.keyward_ok(
                &["enroll", "pkcs11", "--uri", &uri, "--mode", "ecdh"],
                &[
                    ("KEYWARD_PIN", token.pin()),
                    ("KEYWARD_PASSPHRASE", PASSPHRASE),
                ],
            );
            let pem = store
                .keyward_ok(&["export-public", "--protector", "3"], &[])
                .stdout;
            let pem_path = store.dir().join("token.pem");
            std::fs::write(&pem_path, pem).expect("write pem");

            let daemon = Daemon::spawn(store, &[]);
            let message = b"pay the electricity bill";
            let sign = || {
                daemon.request(
                    "POST",
                    "/v1/device/sign",
                    Some(&json!({ "protector": 3, "message": b64(message) })),
                    None,
                )
            };
            let (status, body) = sign();
            assert_eq!((status, code(&body)), (423, "locked"), "{body}");

            // Unlocked with the passphrase, the token has no session: the
            // daemon asks for its PIN instead of using one it does not have.
            daemon.unlock();
            let (status, body) = sign();
            assert_eq!((status, code(&body)), (428, "secret-required"), "{body}");
            assert_eq!(body["error"]["secret"], "pin", "{body}");
            let (status, _) = daemon.request("POST", "/v1/lock", Some(&json!({})), None);
            assert_eq!(status, 200);

            // Unlocked with the token: signatures need no PIN, many times over.
            assert_ok(daemon.request(
                "POST",
                "/v1/unlock",
                Some(&json!({ "with": 3, "secrets": { "pin": token.pin() } })),
                None,
            ));
            let mut last = Vec::new();
            for _ in 0..20 {
                let (status, body) = sign();
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["algorithm"], "ecdsa-p256-sha256", "{body}");
                last = unb64(&body["signature"]);
            }
            let dir = daemon.store().dir();
            let (msg_path, sig_path) = (dir.join("message"), dir.join("sig"));
            std::fs::write(&msg_path, message).expect("write");
            std::fs::write(&sig_path, &last).expect("write");
            let verify = |msg: &std::path::Path| {
                Command::new("openssl")
                    .args(["dgst", "-sha256", "-verify"])
                    .arg(&pem_path)
                    .arg("-signature")
                    .arg(&sig_path)
                    .arg(msg)
                    .output()
                    .expect("openssl installed")
                    .status
                    .success()
            };
            assert!(verify(&msg_path), "openssl rejects the daemon's signature");
            let forged = dir.join("forged");
            std::fs::write(&forged, b"pay the electricity bill twice").expect("write");
            assert!(!verify(&forged));

            // A client, even one allowed to sign, may not use device keys.
            let token_text = daemon.add_client("app", &["sign"], &["*"]);
            let (status, body) = daemon.request(
                "POST",
                "/v1/device/sign",
                Some(&json!({ "protector": 3, "message": b64(message) })),
                Some(&token_text),
            );
            assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

            // Every device signature is in the audit log.
            let (status, body) = daemon.request("GET", "/v1/audit?since=0&limit=1000", None, None);
            assert_eq!(status, 200);
            let signed = body["records"]
                .as_array()
                .expect("records")
                .iter()
                .filter(|r| r["action"] == "device.sign")
                .count();
            assert_eq!(signed, 20);
        },
    );
}
