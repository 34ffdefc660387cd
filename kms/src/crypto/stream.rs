//! Chunked AES-256-GCM for large inputs.
//!
//! ```text
//! stream     = header (mode 0x02) | chunk_exp u8 | salt (32, random) | chunk*
//! chunk i    = AES-256-GCM(stream_key, nonce_i, "", plaintext_i) (ciphertext | tag)
//! nonce_i    = 0x000000 | i as u64 BE | last (0x00, or 0x01 for the final chunk)
//! stream_key = HKDF-SHA256(ikm = data key, salt = salt,
//!                info = "keyward/v1/stream" | SHA-256(header | chunk_exp | salt
//!                                                    | class code | context))
//! ```
//!
//! This is the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár
//! ("Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
//! CRYPTO 2015), as age uses it: the chunk counter in the nonce detects
//! reordering and dropped chunks, the final flag detects truncation and
//! trailing data, and the per-stream key (fresh salt, bound to the header,
//! class and context) detects chunks moved between streams. Every chunk
//! but the last holds exactly `2^chunk_exp` plaintext bytes; the last holds
//! 1 to `2^chunk_exp` bytes, or 0 when the whole plaintext is empty.
//!
//! Speed: input is processed in batches of about 4 MiB. While a second
//! thread seals (or opens) the chunks of the current batch, the calling
//! thread reads the next batch and writes out the previous one, in large
//! vectored reads and writes; then both threads share what is left of the
//! current batch. With [`encrypt`]/[`decrypt`] all I/O stays on the calling
//! thread; [`encrypt_send`]/[`decrypt_send`] take a `Send` writer and let
//! the second thread do the writing, so reads and writes overlap too.
//! Memory is three batch buffers (about 12 MiB), whatever the input size.
//! Decryption writes a batch only after every chunk in it has
//! authenticated.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::aead::{self, NONCE_LEN, Nonce, TAG_LEN};
use super::envelope::{self, HEADER_PREFIX_LEN, Header, Mode};
use crate::keys::{DataClass, KeyName};
use crate::secret::{Secret32, random_bytes};
use crate::{Error, Result};

/// HKDF info prefix of the per-stream key.
const STREAM_INFO: &[u8] = b"keyward/v1/stream";
/// Length of the random per-stream HKDF salt.
pub const SALT_LEN: usize = 32;
/// Chunk size exponent written by [`encrypt`]: 64 KiB chunks.
pub const DEFAULT_CHUNK_EXPONENT: u8 = 16;
/// Smallest chunk size exponent accepted (64-byte chunks; used by the
/// small test vectors).
pub const MIN_CHUNK_EXPONENT: u8 = 6;
/// Largest chunk size exponent accepted (4 MiB chunks), which bounds the
/// memory a hostile header can make decryption use.
pub const MAX_CHUNK_EXPONENT: u8 = 22;
/// Plaintext bytes per batch that the two threads share.
const BATCH_BYTES: usize = 4 << 20;
/// Upper bound on chunks per batch (small chunks).
const MAX_BATCH_CHUNKS: usize = 4096;

/// Reads a ciphertext header from `reader` (one-shot or stream). Returns the
/// parsed header and its raw bytes, which [`decrypt`] needs.
///
/// # Errors
/// `Malformed`, `UnsupportedFormat`, `Io`.
pub fn read_header(reader: &mut dyn Read) -> Result<(Header, Vec<u8>)> {
    let mut raw = vec![0u8; HEADER_PREFIX_LEN];
    let got = read_full(reader, &mut raw, "reading the ciphertext header")?;
    if got < HEADER_PREFIX_LEN {
        // parse_header gives the most specific error for a short input.
        return Err(envelope::parse_header(&raw[..got])
            .err()
            .unwrap_or(Error::Malformed {
                what: "ciphertext header is truncated",
            }));
    }
    let mut prefix = [0u8; HEADER_PREFIX_LEN];
    prefix.copy_from_slice(&raw);
    let rest = envelope::header_rest_len(prefix)?;
    raw.resize(HEADER_PREFIX_LEN + rest, 0);
    let got = read_full(
        reader,
        &mut raw[HEADER_PREFIX_LEN..],
        "reading the ciphertext header",
    )?;
    if got < rest {
        return Err(Error::Malformed {
            what: "ciphertext header is truncated",
        });
    }
    let (header, len) = envelope::parse_header(&raw)?;
    debug_assert_eq!(len, raw.len());
    Ok((header, raw))
}

/// Encrypts everything `reader` yields into `writer` in the stream format,
/// using both cores, in constant memory. `progress` is called with the
/// number of plaintext bytes done so far. Returns the plaintext length.
///
/// # Errors
/// `Io`, `Random`; `InvalidArgument` for version 0.
#[expect(
    clippy::too_many_arguments,
    reason = "the Service contract: key, its identity, binding and I/O"
)]
pub fn encrypt(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    encrypt_default(
        key,
        name,
        version,
        class,
        context,
        reader,
        Output::Local(writer),
        progress,
    )
}

/// [`encrypt`] with a `Send` writer (a `File`, `Stdout`, a `Vec`): the
/// second thread then does the writing, overlapping it with the reads,
/// which makes file-to-file encryption markedly faster. Same output.
///
/// # Errors
/// As [`encrypt`].
#[expect(clippy::too_many_arguments, reason = "twin of `encrypt`")]
pub fn encrypt_send(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    reader: &mut dyn Read,
    writer: &mut (dyn Write + Send),
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    encrypt_default(
        key,
        name,
        version,
        class,
        context,
        reader,
        Output::Shared(writer),
        progress,
    )
}

#[expect(clippy::too_many_arguments, reason = "internal twin of `encrypt`")]
fn encrypt_default(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    reader: &mut dyn Read,
    output: Output<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut salt = [0u8; SALT_LEN];
    random_bytes(&mut salt)?;
    let params = Params {
        name,
        version,
        class,
        context,
        chunk_exponent: DEFAULT_CHUNK_EXPONENT,
        salt,
        batch: None,
    };
    encrypt_impl(key, &params, reader, output, progress)
}

/// [`encrypt`] with a caller-chosen chunk size and salt. Test hook for the
/// fixed vectors in docs/FORMAT.md and for small-chunk tests only: reusing
/// a salt with the same key, header and context reuses nonces.
///
/// # Errors
/// As [`encrypt`]; `InvalidArgument` for a chunk exponent outside
/// [`MIN_CHUNK_EXPONENT`]..=[`MAX_CHUNK_EXPONENT`].
#[doc(hidden)]
#[expect(clippy::too_many_arguments, reason = "test twin of `encrypt`")]
pub fn encrypt_with_params(
    key: &Secret32,
    name: &KeyName,
    version: u32,
    class: DataClass,
    context: &[u8],
    chunk_exponent: u8,
    salt: [u8; SALT_LEN],
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    encrypt_impl(
        key,
        &Params {
            name,
            version,
            class,
            context,
            chunk_exponent,
            salt,
            batch: None,
        },
        reader,
        Output::Local(writer),
        progress,
    )
}

/// Everything [`encrypt_impl`] needs besides the key and the I/O.
struct Params<'a> {
    name: &'a KeyName,
    version: u32,
    class: DataClass,
    context: &'a [u8],
    chunk_exponent: u8,
    salt: [u8; SALT_LEN],
    /// Chunks per batch; `None` for the default (tests use tiny batches).
    batch: Option<usize>,
}

fn encrypt_impl(
    key: &Secret32,
    params: &Params<'_>,
    reader: &mut dyn Read,
    mut output: Output<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let &Params {
        name,
        version,
        class,
        context,
        chunk_exponent,
        salt,
        batch,
    } = params;
    if !(MIN_CHUNK_EXPONENT..=MAX_CHUNK_EXPONENT).contains(&chunk_exponent) {
        return Err(Error::InvalidArgument {
            what: format!("chunk size exponent {chunk_exponent} out of range"),
        });
    }
    if version == 0 {
        return Err(Error::InvalidArgument {
            what: "key versions start at 1".to_owned(),
        });
    }
    let mut header = Header {
        mode: Mode::Stream,
        key: name.clone(),
        version,
    }
    .encode();
    header.push(chunk_exponent);
    header.extend_from_slice(&salt);
    let engine = Engine::new(key, &header, class, context, chunk_exponent, batch);
    write_all(output.writer(), &header)?;
    engine.run(Direction::Seal, reader, output, progress)
}

/// Decrypts the body that follows `raw_header` (already read from
/// `reader`). Writes only authenticated plaintext. Returns its length.
///
/// # Errors
/// `DecryptionFailed`, `Truncated`, `Malformed`, `Io`.
pub fn decrypt(
    key: &Secret32,
    class: DataClass,
    context: &[u8],
    raw_header: &[u8],
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    decrypt_impl(
        key,
        class,
        context,
        raw_header,
        None,
        reader,
        Output::Local(writer),
        progress,
    )
}

/// [`decrypt`] with a `Send` writer: the second thread then does the
/// writing, overlapping it with the reads. Same output.
///
/// # Errors
/// As [`decrypt`].
pub fn decrypt_send(
    key: &Secret32,
    class: DataClass,
    context: &[u8],
    raw_header: &[u8],
    reader: &mut dyn Read,
    writer: &mut (dyn Write + Send),
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    decrypt_impl(
        key,
        class,
        context,
        raw_header,
        None,
        reader,
        Output::Shared(writer),
        progress,
    )
}

#[expect(clippy::too_many_arguments, reason = "internal twin of `decrypt`")]
fn decrypt_impl(
    key: &Secret32,
    class: DataClass,
    context: &[u8],
    raw_header: &[u8],
    batch: Option<usize>,
    reader: &mut dyn Read,
    output: Output<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let (header, len) = envelope::parse_header(raw_header)?;
    if len != raw_header.len() {
        return Err(Error::Malformed {
            what: "extra bytes after the ciphertext header",
        });
    }
    if header.mode != Mode::Stream {
        return Err(Error::Malformed {
            what: "this is a one-shot ciphertext, not a stream",
        });
    }
    let mut params = [0u8; 1 + SALT_LEN];
    if read_full(reader, &mut params, "reading the ciphertext")? < params.len() {
        return Err(Error::Truncated);
    }
    let chunk_exponent = params[0];
    if !(MIN_CHUNK_EXPONENT..=MAX_CHUNK_EXPONENT).contains(&chunk_exponent) {
        return Err(Error::Malformed {
            what: "stream chunk size out of range",
        });
    }
    let mut stream_header = Vec::with_capacity(raw_header.len() + params.len());
    stream_header.extend_from_slice(raw_header);
    stream_header.extend_from_slice(&params);
    let engine = Engine::new(key, &stream_header, class, context, chunk_exponent, batch);
    engine.run(Direction::Open, reader, output, progress)
}

/// The per-stream key: `HKDF-SHA256(ikm = data key, salt = the header's
/// salt, info = "keyward/v1/stream" | SHA-256(stream_header | class code |
/// context))`, where `stream_header` is everything before the first chunk
/// (common header, chunk exponent and salt). Exposed for the test vectors in
/// docs/FORMAT.md.
#[doc(hidden)]
pub fn stream_key(
    data_key: &Secret32,
    stream_header: &[u8],
    class: DataClass,
    context: &[u8],
) -> Secret32 {
    let mut hash = Sha256::new();
    hash.update(stream_header);
    hash.update([class.code()]);
    hash.update(context);
    let mut info = Vec::with_capacity(STREAM_INFO.len() + 32);
    info.extend_from_slice(STREAM_INFO);
    info.extend_from_slice(&hash.finalize());
    let salt_start = stream_header.len().saturating_sub(SALT_LEN);
    aead::hkdf_sha256_32(data_key.expose(), &stream_header[salt_start..], &info)
}

/// The nonce of chunk `index`.
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::from_bytes(nonce)
}

/// One stream's key and geometry.
struct Engine {
    key: aead::Key,
    /// Plaintext bytes per full chunk.
    chunk: usize,
    /// Ciphertext bytes per full chunk (`chunk + TAG_LEN`).
    slot: usize,
    /// Chunks per batch buffer.
    batch: usize,
}

impl Engine {
    fn new(
        data_key: &Secret32,
        stream_header: &[u8],
        class: DataClass,
        context: &[u8],
        chunk_exponent: u8,
        batch: Option<usize>,
    ) -> Self {
        let stream_key = stream_key(data_key, stream_header, class, context);
        let chunk = 1usize << chunk_exponent;
        Self {
            key: aead::Key::new(&stream_key),
            chunk,
            slot: chunk + TAG_LEN,
            batch: batch
                .unwrap_or(BATCH_BYTES / chunk)
                .clamp(2, MAX_BATCH_CHUNKS),
        }
    }

    /// Seals every chunk-sized piece of `region` (plaintext followed by
    /// room for its tag); chunk `i` of the region has index `base + i`, and
    /// the last one is the stream's final chunk if `final_batch`.
    fn seal_slot(
        &self,
        base: u64,
        count: usize,
        final_batch: bool,
        i: usize,
        s: &mut [u8],
    ) -> Result<()> {
        let last = final_batch && i + 1 == count;
        let n = s.len() - TAG_LEN;
        let tag = self
            .key
            .seal_in_place(chunk_nonce(index(base, i)?, last), &[], &mut s[..n])?;
        s[n..].copy_from_slice(&tag);
        Ok(())
    }

    fn open_slot(
        &self,
        base: u64,
        count: usize,
        final_batch: bool,
        i: usize,
        s: &mut [u8],
    ) -> Result<()> {
        let last = final_batch && i + 1 == count;
        self.key
            .open_in_place(chunk_nonce(index(base, i)?, last), &[], s)
            .map(|_| ())
    }

    /// Seals (`Direction::Seal`) or opens (`Direction::Open`) the chunks
    /// of `reader` into `output`; returns the plaintext length. Three
    /// rotating buffers: `cur` is being sealed or opened while `prev`
    /// (done last round) is written out and `next` is filled. Plaintext
    /// passes through them, so they are zeroized when dropped.
    fn run(
        &self,
        dir: Direction,
        reader: &mut dyn Read,
        mut output: Output<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        let (slot, n) = (self.slot, self.batch);
        let carry = self.carry(dir);
        let new_buffer = || Zeroizing::new(vec![0u8; n * slot]);
        // `prev` and `next` are allocated only once the input outgrows one
        // batch: a small message then costs one buffer, not three (each is
        // zeroized on drop, which touches every page).
        let (mut prev, mut cur, mut next) = (
            Zeroizing::new(Vec::new()),
            new_buffer(),
            Zeroizing::new(Vec::new()),
        );
        let (mut cur_len, mut eof) = self.fill(dir, reader, &mut cur, 0)?;
        // Length of the region at the start of `prev` still to be written
        // (chunks with their tags).
        let mut pending = 0usize;
        let mut base = 0u64;
        let mut done = 0u64;
        while !eof {
            // `cur` is full and more may follow. Its last chunk is final
            // only if the input ends right after it, which we do not know
            // yet: hold it back and seal or open it with the next batch.
            if next.len() < n * slot {
                next = new_buffer();
            }
            let (work_part, held) = cur.split_at_mut((n - 1) * slot);
            let (mut next_len, mut next_eof) = (0, false);
            let prev_region = &prev[..pending];
            let next_buffer = &mut next[..];
            let (local, shared) = output.split();
            in_parallel(
                work_part,
                slot,
                || {
                    if let Some(w) = local {
                        self.write(dir, w, prev_region)?;
                    }
                    next_buffer[..carry].copy_from_slice(&held[..carry]);
                    (next_len, next_eof) = self.fill(dir, reader, next_buffer, carry)?;
                    Ok(())
                },
                move || shared.map_or(Ok(()), |w| self.write(dir, w, prev_region)),
                &|i, s| self.process(dir, base, n - 1, false, i, s),
            )?;
            if pending > 0 {
                done += plain_len(pending, slot);
                progress(done);
            }
            base = index(base, n - 1)?;
            pending = (n - 1) * slot;
            // prev <- cur (done), cur <- next (filled), next <- prev (free).
            std::mem::swap(&mut prev, &mut cur);
            std::mem::swap(&mut cur, &mut next);
            (cur_len, eof) = (next_len, next_eof);
        }
        // Everything left is in `cur`: its last chunk is the final one.
        let last = match dir {
            Direction::Seal => self.last_to_seal(cur_len),
            Direction::Open => self.last_to_open(&cur, cur_len, base)?,
        };
        let prev_region = &prev[..pending];
        let (local, shared) = output.split();
        let result = in_parallel(
            &mut cur[..last.len],
            slot,
            || local.map_or(Ok(()), |w| self.write(dir, w, prev_region)),
            move || shared.map_or(Ok(()), |w| self.write(dir, w, prev_region)),
            &|i, s| self.process(dir, base, last.count, true, i, s),
        );
        if let (Err(Error::DecryptionFailed), Some(mut held)) = (&result, last.held) {
            // A full-size final chunk that fails as final but opens as
            // non-final means the stream was cut at a chunk boundary.
            if self
                .key
                .open_in_place(chunk_nonce(last.final_index, false), &[], &mut held)
                .is_ok()
            {
                return Err(Error::Truncated);
            }
        }
        result?;
        if pending > 0 {
            done += plain_len(pending, slot);
            progress(done);
        }
        let writer = output.writer();
        self.write(dir, writer, &cur[..last.len])?;
        writer.flush().map_err(|e| Error::io(dir.writing(), e))?;
        done += plain_len(last.len, slot);
        progress(done);
        Ok(done)
    }

    /// The final batch of plaintext, `cur_len` bytes: its chunks, the last
    /// flagged final (one empty chunk for an empty input).
    fn last_to_seal(&self, cur_len: usize) -> Last {
        let chunk = self.chunk;
        let count = cur_len.div_ceil(chunk).max(1);
        let last_len = cur_len - (count - 1) * chunk;
        Last {
            count,
            len: (count - 1) * self.slot + last_len + TAG_LEN,
            held: None,
            final_index: 0,
        }
    }

    /// The final batch of ciphertext, the first `cur_len` bytes of `cur`
    /// (whose chunks start at index `base`), checked for the shapes no
    /// writer makes.
    fn last_to_open(&self, cur: &[u8], cur_len: usize, base: u64) -> Result<Last> {
        let slot = self.slot;
        let (full, rest) = (cur_len / slot, cur_len % slot);
        let count = full + usize::from(rest > 0);
        if count == 0 {
            // Only possible before the first chunk: the body is empty.
            return Err(Error::Truncated);
        }
        if rest > 0 && rest < TAG_LEN {
            return Err(Error::DecryptionFailed);
        }
        let final_index = index(base, count - 1)?;
        if rest == TAG_LEN && final_index > 0 {
            // Our writer never ends a non-empty stream with an empty chunk;
            // refuse the non-canonical form.
            return Err(Error::Malformed {
                what: "stream ends with an empty chunk after data",
            });
        }
        let last_start = (count - 1) * slot;
        Ok(Last {
            count,
            len: cur_len,
            held: (rest == 0).then(|| Zeroizing::new(cur[last_start..cur_len].to_vec())),
            final_index,
        })
    }

    /// How many bytes of a held-back slot the next batch starts with: its
    /// plaintext when sealing, the whole chunk with its tag when opening.
    fn carry(&self, dir: Direction) -> usize {
        match dir {
            Direction::Seal => self.chunk,
            Direction::Open => self.slot,
        }
    }

    /// Reads the input into `buf` from `start` ([`fill_plain`] or
    /// [`fill_cipher`]).
    fn fill(
        &self,
        dir: Direction,
        reader: &mut dyn Read,
        buf: &mut [u8],
        start: usize,
    ) -> Result<(usize, bool)> {
        match dir {
            Direction::Seal => fill_plain(reader, buf, self.chunk, self.slot, start),
            Direction::Open => fill_cipher(reader, buf, start),
        }
    }

    /// Writes a region that is done: the sealed chunks, or the plaintext of
    /// the opened ones.
    fn write(&self, dir: Direction, writer: &mut dyn Write, region: &[u8]) -> Result<()> {
        match dir {
            Direction::Seal => write_all(writer, region),
            Direction::Open => write_plain(writer, region, self.slot),
        }
    }

    /// Seals or opens chunk `i` of a batch ([`Engine::seal_slot`],
    /// [`Engine::open_slot`]).
    fn process(
        &self,
        dir: Direction,
        base: u64,
        count: usize,
        final_batch: bool,
        i: usize,
        s: &mut [u8],
    ) -> Result<()> {
        match dir {
            Direction::Seal => self.seal_slot(base, count, final_batch, i, s),
            Direction::Open => self.open_slot(base, count, final_batch, i, s),
        }
    }
}

/// Which way [`Engine::run`] works.
#[derive(Clone, Copy)]
enum Direction {
    /// Plaintext in, ciphertext out.
    Seal,
    /// Ciphertext in, authenticated plaintext out.
    Open,
}

impl Direction {
    /// What a failed write was doing.
    fn writing(self) -> &'static str {
        match self {
            Self::Seal => "writing the ciphertext",
            Self::Open => "writing the plaintext",
        }
    }
}

/// The final batch of a stream.
struct Last {
    /// Its chunks.
    count: usize,
    /// Its bytes in the buffer, tags included.
    len: usize,
    /// When opening and the final chunk is full-size: a copy of it, to tell
    /// a stream cut at a chunk boundary from a forged one.
    held: Option<Zeroizing<Vec<u8>>>,
    /// The index of its final chunk (when opening).
    final_index: u64,
}

/// Where a stream's output goes.
enum Output<'w> {
    /// A writer only the calling thread may use.
    Local(&'w mut dyn Write),
    /// A `Send` writer: the second thread writes each batch while the
    /// calling thread reads the next, so reads and writes overlap.
    Shared(&'w mut (dyn Write + Send)),
}

impl Output<'_> {
    /// The writer for the calling thread's part (`Local`) or for the second
    /// thread's part (`Shared`) of a batch; exactly one is `Some`.
    fn split(&mut self) -> (Option<&mut dyn Write>, Option<&mut (dyn Write + Send)>) {
        match self {
            Self::Local(w) => (Some(&mut **w), None),
            Self::Shared(w) => (None, Some(&mut **w)),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Local(w) => &mut **w,
            Self::Shared(w) => &mut **w,
        }
    }
}

/// The index of chunk `i` of a batch starting at `base`.
fn index(base: u64, i: usize) -> Result<u64> {
    base.checked_add(i as u64).ok_or(Error::InvalidArgument {
        what: "stream has more than 2^64 chunks".to_owned(),
    })
}

/// Plaintext bytes held by an opened region of `len` bytes.
fn plain_len(len: usize, slot: usize) -> u64 {
    (len - len.div_ceil(slot) * TAG_LEN) as u64
}

/// Applies `work` to the `slot`-sized pieces of `region` on two threads:
/// this thread first runs `main_io`, the second thread first runs
/// `worker_io`, then both take pieces until none are left. Stops handing
/// out pieces after the first error.
fn in_parallel(
    region: &mut [u8],
    slot: usize,
    main_io: impl FnOnce() -> Result<()>,
    worker_io: impl FnOnce() -> Result<()> + Send,
    work: &(dyn Fn(usize, &mut [u8]) -> Result<()> + Sync),
) -> Result<()> {
    if region.len() <= slot {
        // One piece: not worth a thread.
        main_io()?;
        worker_io()?;
        return region
            .chunks_mut(slot)
            .enumerate()
            .try_for_each(|(i, s)| work(i, s));
    }
    let queue = Mutex::new(region.chunks_mut(slot).enumerate());
    let failed = AtomicBool::new(false);
    let drain = || -> Result<()> {
        while !failed.load(Ordering::Relaxed) {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
            let Some((i, s)) = next else { break };
            if let Err(e) = work(i, s) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        // `drain` only borrows, so it is `Copy`: both threads run it.
        let worker = scope.spawn(move || {
            let io = worker_io();
            let mine = drain();
            io.and(mine)
        });
        let io = main_io();
        let mine = drain();
        let theirs = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        io.and(mine).and(theirs)
    })
}

/// Reads plaintext into the chunk areas of `buf` (each `slot` bytes apart,
/// `chunk` long), from plaintext offset `start`, until the buffer is full
/// or the input ends. Returns the plaintext bytes in `buf` and whether the
/// input ended.
fn fill_plain(
    reader: &mut dyn Read,
    buf: &mut [u8],
    chunk: usize,
    slot: usize,
    start: usize,
) -> Result<(usize, bool)> {
    let mut slices: Vec<IoSliceMut<'_>> = buf
        .chunks_mut(slot)
        .map(|s| IoSliceMut::new(&mut s[..chunk]))
        .collect();
    let capacity = slices.len() * chunk;
    let mut bufs = &mut slices[..];
    IoSliceMut::advance_slices(&mut bufs, start);
    let mut filled = start;
    while filled < capacity {
        match reader.read_vectored(bufs) {
            Ok(0) => return Ok((filled, true)),
            Ok(k) if k <= capacity - filled => {
                filled += k;
                IoSliceMut::advance_slices(&mut bufs, k);
            }
            Ok(_) => return Err(bad_reader("reading the plaintext")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the plaintext", e)),
        }
    }
    Ok((filled, false))
}

/// Reads ciphertext into `buf[start..]` until it is full or the input
/// ends. Returns the bytes in `buf` and whether the input ended.
fn fill_cipher(reader: &mut dyn Read, buf: &mut [u8], start: usize) -> Result<(usize, bool)> {
    let mut filled = start;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => return Ok((filled, true)),
            Ok(k) if k <= buf.len() - filled => filled += k,
            Ok(_) => return Err(bad_reader("reading the ciphertext")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the ciphertext", e)),
        }
    }
    Ok((filled, false))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(k) if k <= buf.len() - filled => filled += k,
            Ok(_) => return Err(bad_reader(what)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(what.to_owned(), e)),
        }
    }
    Ok(filled)
}

fn bad_reader(what: &str) -> Error {
    Error::io(
        what.to_owned(),
        io::Error::other("reader returned more bytes than asked for"),
    )
}

fn write_all(writer: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    writer
        .write_all(bytes)
        .map_err(|e| Error::io("writing the ciphertext", e))
}

/// Writes the plaintext of an opened region: each `slot`-sized piece minus
/// its trailing tag, in one vectored write where the writer supports it.
fn write_plain(writer: &mut dyn Write, region: &[u8], slot: usize) -> Result<()> {
    let mut slices: Vec<IoSlice<'_>> = region
        .chunks(slot)
        .map(|s| IoSlice::new(&s[..s.len() - TAG_LEN]))
        .collect();
    let mut remaining: usize = slices.iter().map(|s| s.len()).sum();
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, 0);
    let err = |e| Error::io("writing the plaintext", e);
    while remaining > 0 {
        match writer.write_vectored(bufs) {
            Ok(0) => return Err(err(io::ErrorKind::WriteZero.into())),
            Ok(k) if k <= remaining => {
                remaining -= k;
                IoSlice::advance_slices(&mut bufs, k);
            }
            Ok(_) => return Err(err(io::Error::other("writer wrote more than given"))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(b: u8) -> Secret32 {
        Secret32::try_from_slice(&[b; 32]).expect("32 bytes")
    }

    fn name() -> KeyName {
        KeyName::new("files").expect("name")
    }

    /// A small-chunk stream (64-byte chunks) of `len` pattern bytes.
    fn small(len: usize, salt: u8) -> (Vec<u8>, Vec<u8>) {
        let pt: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let mut ct = Vec::new();
        let n = encrypt_with_params(
            &key(1),
            &name(),
            2,
            DataClass::Private,
            b"ctx",
            MIN_CHUNK_EXPONENT,
            [salt; SALT_LEN],
            &mut &pt[..],
            &mut ct,
            &mut |_| {},
        )
        .expect("encrypt");
        assert_eq!(n, len as u64);
        (pt, ct)
    }

    fn dec_with(k: &Secret32, class: DataClass, ctx: &[u8], ct: &[u8]) -> Result<Vec<u8>> {
        let mut r = ct;
        let (h, raw) = read_header(&mut r)?;
        assert_eq!(h.mode, Mode::Stream);
        let mut out = Vec::new();
        let n = decrypt(k, class, ctx, &raw, &mut r, &mut out, &mut |_| {})?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }

    fn dec(ct: &[u8]) -> Result<Vec<u8>> {
        dec_with(&key(1), DataClass::Private, b"ctx", ct)
    }

    /// Decrypts with batches of two chunks, so that a small stream crosses
    /// several batch boundaries (and their held-back chunks).
    fn dec2(ct: &[u8]) -> Result<Vec<u8>> {
        let mut r = ct;
        let (_, raw) = read_header(&mut r)?;
        let mut out = Vec::new();
        decrypt_impl(
            &key(1),
            DataClass::Private,
            b"ctx",
            &raw,
            Some(2),
            &mut r,
            Output::Shared(&mut out),
            &mut |_| {},
        )?;
        Ok(out)
    }

    /// Header (6 + 5 + 4) + exponent + salt.
    const BODY: usize = HEADER_PREFIX_LEN + 5 + 4 + 1 + SALT_LEN;
    const SLOT: usize = 64 + TAG_LEN;

    #[test]
    fn sizes_and_round_trips() {
        for len in [0usize, 1, 63, 64, 65, 127, 128, 129, 200, 64 * 70 + 5] {
            let (pt, ct) = small(len, 1);
            let chunks = len.div_ceil(64).max(1);
            assert_eq!(ct.len(), BODY + len + chunks * TAG_LEN, "len {len}");
            assert_eq!(dec(&ct).expect("decrypt"), pt, "len {len}");
        }
    }

    #[test]
    fn default_chunks_round_trip_and_progress() {
        // Several batches of 64 KiB chunks, ending mid-chunk.
        let len = 2 * BATCH_BYTES + 12345;
        let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut ct = Vec::new();
        let mut seen = Vec::new();
        encrypt(
            &key(3),
            &name(),
            1,
            DataClass::General,
            b"",
            &mut &pt[..],
            &mut ct,
            &mut |n| seen.push(n),
        )
        .expect("encrypt");
        assert!(seen.len() >= 3, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&(len as u64)));
        let mut r = &ct[..];
        let (_, raw) = read_header(&mut r).expect("header");
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let n = decrypt(
            &key(3),
            DataClass::General,
            b"",
            &raw,
            &mut r,
            &mut out,
            &mut |n| seen.push(n),
        )
        .expect("decrypt");
        assert_eq!(n, len as u64);
        assert!(out == pt);
        assert_eq!(seen.last(), Some(&(len as u64)));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

        // The `Send`-writer variants read and write the same format.
        let mut ct2 = Vec::new();
        let mut seen = Vec::new();
        encrypt_send(
            &key(3),
            &name(),
            1,
            DataClass::General,
            b"",
            &mut &pt[..],
            &mut ct2,
            &mut |n| seen.push(n),
        )
        .expect("encrypt_send");
        assert_eq!(ct2.len(), ct.len());
        assert_eq!(seen.last(), Some(&(len as u64)));
        for ciphertext in [&ct, &ct2] {
            let mut r = &ciphertext[..];
            let (_, raw) = read_header(&mut r).expect("header");
            let mut out = Vec::new();
            let n = decrypt_send(
                &key(3),
                DataClass::General,
                b"",
                &raw,
                &mut r,
                &mut out,
                &mut |_| {},
            )
            .expect("decrypt_send");
            assert_eq!(n, len as u64);
            assert!(out == pt);
        }
    }

    #[test]
    fn exact_multiple_of_chunk_has_no_empty_final_chunk() {
        let (_, ct) = small(128, 1);
        assert_eq!(ct.len(), BODY + 2 * SLOT);
    }

    #[test]
    fn every_byte_flip_rejected() {
        let (pt, ct) = small(350, 1);
        assert_eq!(dec2(&ct).expect("small batches"), pt);
        for i in 0..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 0x01;
            assert!(dec(&t).is_err(), "byte {i}");
            assert!(dec2(&t).is_err(), "byte {i}, small batches");
        }
    }

    #[test]
    fn truncation_at_every_length_rejected() {
        let (_, ct) = small(150, 1);
        for len in 0..ct.len() {
            let r = dec(&ct[..len]);
            assert!(r.is_err(), "len {len}");
            assert!(dec2(&ct[..len]).is_err(), "len {len}, small batches");
            if len == BODY || len == BODY + SLOT || len == BODY + 2 * SLOT {
                assert!(matches!(r, Err(Error::Truncated)), "len {len}: {r:?}");
            }
        }
        // Cut on a chunk boundary of a stream whose chunks are all full.
        let (_, ct) = small(192, 1);
        assert!(matches!(dec(&ct[..BODY + 2 * SLOT]), Err(Error::Truncated)));
        assert!(matches!(dec(&ct[..BODY - 1]), Err(Error::Truncated)));
    }

    #[test]
    fn trailing_garbage_rejected() {
        for len in [0usize, 10, 64, 150] {
            let (_, ct) = small(len, 1);
            for extra in [1usize, 15, 16, 17, SLOT, 2 * SLOT + 3] {
                let mut t = ct.clone();
                t.extend(std::iter::repeat_n(0u8, extra));
                assert!(dec(&t).is_err(), "len {len} extra {extra}");
                // Garbage that is a copy of real chunks.
                let mut t = ct.clone();
                t.extend_from_slice(&ct[BODY..]);
                assert!(dec(&t).is_err(), "len {len} duplicated");
            }
        }
    }

    #[test]
    fn reorder_and_swap_between_streams_rejected() {
        let (_, a) = small(200, 1);
        let (_, b) = small(200, 2);
        let chunk = |ct: &[u8], i: usize| ct[BODY + i * SLOT..BODY + (i + 1) * SLOT].to_vec();
        // Swap chunks 0 and 1.
        let mut t = a[..BODY].to_vec();
        t.extend(chunk(&a, 1));
        t.extend(chunk(&a, 0));
        t.extend_from_slice(&a[BODY + 2 * SLOT..]);
        assert!(matches!(dec(&t), Err(Error::DecryptionFailed)));
        assert!(matches!(dec2(&t), Err(Error::DecryptionFailed)));
        // Chunk 1 from another stream of the same key, class and context.
        let mut t = a[..BODY + SLOT].to_vec();
        t.extend(chunk(&b, 1));
        t.extend_from_slice(&a[BODY + 2 * SLOT..]);
        assert!(matches!(dec(&t), Err(Error::DecryptionFailed)));
        // The other stream's header on this body.
        let mut t = b[..BODY].to_vec();
        t.extend_from_slice(&a[BODY..]);
        assert!(matches!(dec(&t), Err(Error::DecryptionFailed)));
        // Dropping a middle chunk.
        let mut t = a[..BODY + SLOT].to_vec();
        t.extend_from_slice(&a[BODY + 2 * SLOT..]);
        assert!(dec(&t).is_err());
        // The final chunk moved to the front of an otherwise cut stream.
        let last = a.len() - (200 % 64 + TAG_LEN);
        let mut t = a[..BODY].to_vec();
        t.extend_from_slice(&a[last..]);
        assert!(dec(&t).is_err());
    }

    #[test]
    fn wrong_key_class_context_rejected() {
        let (_, ct) = small(100, 1);
        for r in [
            dec_with(&key(2), DataClass::Private, b"ctx", &ct),
            dec_with(&key(1), DataClass::General, b"ctx", &ct),
            dec_with(&key(1), DataClass::Private, b"ctX", &ct),
            dec_with(&key(1), DataClass::Private, b"", &ct),
        ] {
            assert!(matches!(r, Err(Error::DecryptionFailed)), "{r:?}");
        }
    }

    #[test]
    fn empty_input_is_one_empty_final_chunk() {
        let (_, ct) = small(0, 1);
        assert_eq!(ct.len(), BODY + TAG_LEN);
        assert_eq!(dec(&ct).expect("decrypt"), Vec::<u8>::new());
        // Header only: no final chunk.
        assert!(matches!(dec(&ct[..BODY]), Err(Error::Truncated)));
    }

    #[test]
    fn bad_headers() {
        let (_, ct) = small(10, 1);
        let mut t = ct.clone();
        t[3] = 2;
        assert!(matches!(
            dec(&t),
            Err(Error::UnsupportedFormat {
                version: 2,
                supported: 1
            })
        ));
        let mut t = ct.clone();
        t[0] = b'k';
        assert!(matches!(dec(&t), Err(Error::Malformed { .. })));
        for exp in [0u8, 5, 23, 255] {
            let mut t = ct.clone();
            t[BODY - SALT_LEN - 1] = exp;
            assert!(matches!(dec(&t), Err(Error::Malformed { .. })), "exp {exp}");
        }
        // A one-shot header given to stream decryption.
        let one =
            envelope::seal(&key(1), &name(), 2, DataClass::Private, b"ctx", b"x").expect("seal");
        let mut r = &one[..];
        let (h, raw) = read_header(&mut r).expect("header");
        assert_eq!(h.mode, Mode::OneShot);
        let r = decrypt(
            &key(1),
            DataClass::Private,
            b"ctx",
            &raw,
            &mut r,
            &mut Vec::new(),
            &mut |_| {},
        );
        assert!(matches!(r, Err(Error::Malformed { .. })));
        // Header truncated inside the name.
        assert!(matches!(
            read_header(&mut &ct[..8]),
            Err(Error::Malformed { .. })
        ));
        assert!(matches!(
            read_header(&mut &b"KWD\x07"[..]),
            Err(Error::UnsupportedFormat { version: 7, .. })
        ));
    }

    #[test]
    fn non_canonical_empty_final_chunk_refused() {
        // Build, with the internals, a stream of one full chunk followed by
        // an empty final chunk; it authenticates but is not canonical.
        let (_, ct) = small(64, 1);
        let mut r = &ct[..];
        let (_, raw) = read_header(&mut r).expect("header");
        let mut sh = raw.clone();
        sh.extend_from_slice(&ct[raw.len()..BODY]);
        let engine = Engine::new(
            &key(1),
            &sh,
            DataClass::Private,
            b"ctx",
            MIN_CHUNK_EXPONENT,
            None,
        );
        let mut c0: Vec<u8> = (0..64usize).map(|i| (i * 7 + 3) as u8).collect();
        let tag0 = engine
            .key
            .seal_in_place(chunk_nonce(0, false), &[], &mut c0)
            .expect("seal");
        let tag1 = engine
            .key
            .seal_in_place(chunk_nonce(1, true), &[], &mut [])
            .expect("seal");
        let mut t = ct[..BODY].to_vec();
        t.extend_from_slice(&c0);
        t.extend_from_slice(&tag0);
        t.extend_from_slice(&tag1);
        assert!(matches!(dec(&t), Err(Error::Malformed { .. })));
    }

    /// A reader that hands out at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A writer that takes at most `step` bytes per call.
    struct Sip(Vec<u8>, usize);

    impl Write for Sip {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_round_trip_around_chunk_boundaries(
            chunks in 0usize..80,
            delta in 0usize..=4,
            step in 1usize..500,
            exp in MIN_CHUNK_EXPONENT..=8,
            batch in prop_oneof![Just(None), (2usize..6).prop_map(Some)],
            shared in any::<bool>(),
        ) {
            let chunk = 1usize << exp;
            // From two below to two above a multiple of the chunk size.
            let len = (chunks * chunk + delta).saturating_sub(2);
            let pt: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let mut sip = Sip(Vec::new(), step);
            let params = Params {
                name: &name(), version: 5, class: DataClass::Sensitive, context: b"p",
                chunk_exponent: exp, salt: [4; SALT_LEN], batch,
            };
            let mut seen = 0;
            let output = if shared { Output::Shared(&mut sip) } else { Output::Local(&mut sip) };
            encrypt_impl(&key(9), &params, &mut Trickle(&pt, step), output, &mut |n| seen = n)
                .expect("encrypt");
            prop_assert_eq!(seen, len as u64);
            let ct = sip.0;
            prop_assert_eq!(ct.len(), BODY + len + len.div_ceil(chunk).max(1) * TAG_LEN);
            let mut r = Trickle(&ct, step);
            let (_, raw) = read_header(&mut r).expect("header");
            let mut out = Sip(Vec::new(), step + 3);
            let mut seen = 0;
            let output = if shared { Output::Local(&mut out) } else { Output::Shared(&mut out) };
            decrypt_impl(&key(9), DataClass::Sensitive, b"p", &raw, batch, &mut r, output, &mut |n| seen = n)
                .expect("decrypt");
            prop_assert!(out.0 == pt);
            prop_assert_eq!(seen, len as u64);
            // A tiny-batch encryption decrypts with the default batch, and
            // every cut on a chunk boundary is reported as truncation.
            let mut r = &ct[..];
            let (_, raw) = read_header(&mut r).expect("header");
            let mut out = Vec::new();
            decrypt(&key(9), DataClass::Sensitive, b"p", &raw, &mut r, &mut out, &mut |_| {})
                .expect("decrypt default batch");
            prop_assert!(out == pt);
            let slot = chunk + TAG_LEN;
            for cut in (BODY..ct.len()).step_by(slot) {
                let mut r = &ct[..cut];
                let (_, raw) = read_header(&mut r).expect("header");
                let mut sink = Vec::new();
                let res = decrypt_impl(&key(9), DataClass::Sensitive, b"p", &raw, batch, &mut r, Output::Local(&mut sink), &mut |_| {});
                prop_assert!(matches!(res, Err(Error::Truncated)), "cut {} of {}: {:?}", cut, ct.len(), res);
            }
        }
    }
}
