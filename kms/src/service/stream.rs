//! Streams of any length, in constant memory.

use std::io::{Read, Write};

use serde::Serialize;
use serde_json::json;

use super::Service;
use crate::audit::Action;
use crate::crypto::{envelope, stream};
use crate::keys::KeyName;
use crate::{Error, Result};

/// Result of a streaming operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamSummary {
    /// Key name.
    pub key: KeyName,
    /// Key version.
    pub version: u32,
    /// Plaintext bytes processed.
    pub bytes: u64,
}

impl Service {
    /// Encrypts a stream of any length in constant memory.
    ///
    /// # Errors
    /// As [`Service::encrypt`], plus `Io`.
    pub fn encrypt_stream(
        &mut self,
        name: &KeyName,
        context: &[u8],
        reader: &mut dyn Read,
        writer: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<StreamSummary> {
        // A stream uses its own key derived from a fresh salt, so it counts
        // as one use of the data-key version.
        let (key, version, dek) = self.reserve_encryption(name, Action::EncryptStream, None)?;
        // The writer is `Send` so that writes run on the stream's second
        // thread, overlapping the kernel's copy with encryption.
        let result = stream::encrypt_send(
            &dek, name, version, key.class, context, reader, writer, progress,
        );
        self.audit_stream_end(Action::EncryptStreamEnd, name, version, &result);
        Ok(StreamSummary {
            key: name.clone(),
            version,
            bytes: result?,
        })
    }

    /// Decrypts either format read from `reader`. Stream plaintext is
    /// written chunk by chunk, each only after its tag verified; the audit
    /// record is written before the first byte.
    ///
    /// # Errors
    /// As [`Service::decrypt`], plus `Truncated` and `Io`.
    pub fn decrypt_stream(
        &mut self,
        context: &[u8],
        reader: &mut dyn Read,
        writer: &mut (dyn Write + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<StreamSummary> {
        let (header, raw) = stream::read_header(reader)?;
        let (key, dek) = self.decryption_key(&header.key, header.version)?;
        match header.mode {
            envelope::Mode::OneShot => {
                let mut ciphertext = raw;
                reader
                    .take(envelope::MAX_CIPHERTEXT_LEN)
                    .read_to_end(&mut ciphertext)
                    .map_err(|e| Error::io("cannot read the ciphertext", e))?;
                let plain =
                    self.open_audited(Action::Decrypt, &header, &key, &dek, context, &ciphertext)?;
                writer
                    .write_all(plain.expose())
                    .map_err(|e| Error::io("cannot write the plaintext", e))?;
                progress(plain.expose().len() as u64);
                Ok(StreamSummary {
                    key: header.key,
                    version: header.version,
                    bytes: plain.expose().len() as u64,
                })
            }
            envelope::Mode::Stream => {
                self.audit_use(
                    Action::DecryptStream,
                    &header.key,
                    header.version,
                    key.class,
                    None,
                    true,
                )?;
                let result =
                    stream::decrypt_send(&dek, key.class, context, &raw, reader, writer, progress);
                self.audit_stream_end(
                    Action::DecryptStreamEnd,
                    &header.key,
                    header.version,
                    &result,
                );
                Ok(StreamSummary {
                    key: header.key,
                    version: header.version,
                    bytes: result?,
                })
            }
        }
    }

    /// Records how a stream ended. The stream was audited before its first
    /// byte; this closing record is best effort (the work is done), and a
    /// failure to write it is logged.
    pub(super) fn audit_stream_end(
        &mut self,
        action: Action,
        name: &KeyName,
        version: u32,
        result: &Result<u64>,
    ) {
        let fields = match result {
            Ok(bytes) => json!({ "key": name, "version": version, "size": bytes,
                                 "actor": self.actor_json() }),
            Err(e) => json!({ "key": name, "version": version, "error": e.to_string(),
                              "actor": self.actor_json() }),
        };
        if let Err(e) = self.record_use(action, result.is_ok(), fields) {
            tracing::warn!(error = %e, %action, "could not record the end of a stream");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::*;

    #[test]
    fn decrypt_takes_a_whole_stream_ciphertext_too() {
        let (_fx, mut svc, k) = fixture_with_key("k");
        let mut ct = Vec::new();
        svc.encrypt_stream(
            &k,
            b"ctx",
            &mut &b"streamed, then sent whole"[..],
            &mut ct,
            &mut |_| {},
        )
        .expect("encrypt stream");
        let d = svc.decrypt(b"ctx", &ct).expect("decrypt");
        assert_eq!(d.plaintext.expose(), b"streamed, then sent whole");
        assert_eq!((d.key, d.version), (k, 1));
        assert!(matches!(
            svc.decrypt(b"other", &ct),
            Err(Error::DecryptionFailed)
        ));
        ct.truncate(ct.len() - 1);
        assert!(svc.decrypt(b"ctx", &ct).is_err());
    }
}
