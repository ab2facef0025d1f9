//! Sealing blobs: zstd compression, then (optionally) encryption.
//!
//! Format 2: every pack of an encrypted repository has its own random data key, wrapped
//! with age to the repository's recipients (one X25519 operation per pack, not per blob).
//! Data and tree blobs are sealed one by one with ChaCha20-Poly1305 under that key, so one
//! damaged blob never takes its neighbours with it, and writing still needs only the
//! recipients' public keys: the writer forgets the data key when its pack is finished.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The first byte of a blob's plaintext payload says how it was compressed. It lives
/// inside the encryption so the disk does not reveal which data compressed well.
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "invalid recipient {0:?}: expected an age X25519 key (age1…) or an SSH public key (ssh-ed25519 / ssh-rsa)"
    )]
    BadRecipient(String),
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} holds no usable identity (age secret key or unencrypted SSH private key)")]
    NoIdentity { path: PathBuf },
    #[error(
        "this data is encrypted: pass --identity FILE (an age identity or SSH private key matching a recipient)"
    )]
    IdentityRequired,
    #[error("the identity does not match any recipient of this repository")]
    WrongIdentity,
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
    #[error("cannot encrypt: {0}")]
    Encrypt(String),
    #[error("cannot decompress: {0}")]
    Decompress(String),
    #[error("blob is empty or has an unknown codec byte")]
    BadCodec,
    #[error("authentication failed (damaged, altered, or moved from another pack)")]
    BadTag,
    #[error("a wrapped pack key holds {0} bytes, not 32")]
    BadPackKey(usize),
}

/// A public key data is encrypted to, kept with its text form for the repository config.
#[derive(Clone)]
pub struct Recipient {
    text: String,
    key: Arc<dyn age::Recipient + Send + Sync>,
}

impl Recipient {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Recipient {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, CryptoError> {
        let text = s.trim().to_string();
        let key: Arc<dyn age::Recipient + Send + Sync> = if text.starts_with("age1") {
            Arc::new(
                age::x25519::Recipient::from_str(&text)
                    .map_err(|_| CryptoError::BadRecipient(text.clone()))?,
            )
        } else if text.starts_with("ssh-") {
            Arc::new(
                age::ssh::Recipient::from_str(&text)
                    .map_err(|_| CryptoError::BadRecipient(text.clone()))?,
            )
        } else {
            return Err(CryptoError::BadRecipient(text));
        };
        Ok(Recipient { text, key })
    }
}

/// Reads a recipients file: one key per line, `#` comments and blank lines ignored.
pub fn read_recipients_file(path: &Path) -> Result<Vec<Recipient>, CryptoError> {
    let text = std::fs::read_to_string(path).map_err(|error| CryptoError::Io {
        path: path.to_owned(),
        error,
    })?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(Recipient::from_str)
        .collect()
}

/// Secret keys able to decrypt, loaded from an age identity file or an SSH private key.
#[derive(Clone)]
pub struct Identities(Arc<Vec<Box<dyn age::Identity + Send + Sync>>>);

impl Identities {
    pub fn from_file(path: &Path) -> Result<Identities, CryptoError> {
        let io = |error| CryptoError::Io {
            path: path.to_owned(),
            error,
        };
        let bytes = std::fs::read(path).map_err(io)?;
        let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        if let Ok(file) = age::IdentityFile::from_buffer(&bytes[..])
            && let Ok(found) = file.into_identities()
        {
            ids.extend(found);
        }
        if ids.is_empty()
            && let Ok(ssh) = age::ssh::Identity::from_buffer(&bytes[..], None)
            && matches!(ssh, age::ssh::Identity::Unencrypted(_))
        {
            ids.push(Box::new(ssh));
        }
        if ids.is_empty() {
            return Err(CryptoError::NoIdentity {
                path: path.to_owned(),
            });
        }
        Ok(Identities(Arc::new(ids)))
    }

    #[cfg(test)]
    pub(crate) fn from_vec(ids: Vec<Box<dyn age::Identity + Send + Sync>>) -> Identities {
        Identities(Arc::new(ids))
    }

    fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|b| b.as_ref() as &dyn age::Identity)
    }
}

fn age_encrypt(recipients: &[Recipient], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let enc = age::Encryptor::with_recipients(
        recipients
            .iter()
            .map(|r| r.key.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    w.write_all(plain)
        .and_then(|_| w.finish().map(|_| ()))
        .map_err(|e| CryptoError::Encrypt(e.to_string()))?;
    Ok(out)
}

fn age_decrypt(identities: &Identities, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let dec =
        age::Decryptor::new_buffered(sealed).map_err(|e| CryptoError::Decrypt(e.to_string()))?;
    let mut r = dec.decrypt(identities.iter()).map_err(|e| match e {
        age::DecryptError::NoMatchingKeys => CryptoError::WrongIdentity,
        other => CryptoError::Decrypt(other.to_string()),
    })?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| CryptoError::Decrypt(e.to_string()))?;
    Ok(out)
}

/// Byte equality whose time does not depend on where the inputs differ (for secrets:
/// tokens, keys, MACs).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Secret per-repository key material. Stored in the repository encrypted to the
/// recipients (so the identity alone restores everything) and cached in plain form in the
/// writer's state directory (so writing needs no identity).
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyMaterial {
    #[serde(with = "hex_key")]
    pub id_key: [u8; 32],
    /// Seeds fastcdc's gear table so chunk boundaries do not fingerprint known files.
    pub chunker_seed: u64,
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(k: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(k))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

impl KeyMaterial {
    pub fn generate() -> KeyMaterial {
        let mut id_key = [0u8; 32];
        let mut seed = [0u8; 8];
        getrandom::fill(&mut id_key).expect("the OS random source is available");
        getrandom::fill(&mut seed).expect("the OS random source is available");
        KeyMaterial {
            id_key,
            chunker_seed: u64::from_le_bytes(seed),
        }
    }

    /// The key manifests are authenticated with, derived so that it is independent of
    /// the id key it comes from.
    pub fn mac_key(&self) -> [u8; 32] {
        blake3::derive_key("backuphub 2026-11 snapshot manifest MAC", &self.id_key)
    }

    /// Equality without an early exit on the first differing byte.
    pub fn same_as(&self, other: &KeyMaterial) -> bool {
        constant_time_eq(&self.id_key, &other.id_key) && self.chunker_seed == other.chunker_seed
    }

    pub fn seal(&self, recipients: &[Recipient]) -> Result<Vec<u8>, CryptoError> {
        let json = serde_json::to_vec(self).expect("key material serializes");
        age_encrypt(recipients, &json)
    }

    pub fn open(identities: &Identities, sealed: &[u8]) -> Result<KeyMaterial, CryptoError> {
        let json = age_decrypt(identities, sealed)?;
        serde_json::from_slice(&json).map_err(|e| CryptoError::Decrypt(e.to_string()))
    }
}

/// The repository's encryption settings: recipients to wrap pack keys and seal manifest
/// details to, and the identities (when given) to unwrap them. Cheap to clone.
#[derive(Clone)]
pub struct Sealer {
    level: i32,
    recipients: Arc<Vec<Recipient>>,
    identities: Option<Identities>,
}

impl Sealer {
    pub fn new(level: i32, recipients: Vec<Recipient>, identities: Option<Identities>) -> Sealer {
        Sealer {
            level,
            recipients: Arc::new(recipients),
            identities,
        }
    }

    pub fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }

    pub fn can_open(&self) -> bool {
        !self.encrypted() || self.identities.is_some()
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// A fresh key for a new pack, or `None` for an unencrypted repository.
    pub fn new_pack_key(&self) -> Result<Option<PackKey>, CryptoError> {
        if self.encrypted() {
            PackKey::generate(&self.recipients).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Unwraps a pack's data key with the identities.
    pub fn unwrap_pack_key(&self, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let ids = self
            .identities
            .as_ref()
            .ok_or(CryptoError::IdentityRequired)?;
        DataKey::unwrap(ids, wrapped)
    }

    /// Seals a small standalone payload (a manifest's details): compressed, then one age
    /// file of its own when encrypted. Blobs in packs use [`PackKey`] instead.
    pub fn seal(&self, raw: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut payload = Vec::new();
        BlobCompressor::new(self.level)?.compress_into(raw, &mut payload)?;
        if self.encrypted() {
            age_encrypt(&self.recipients, &payload)
        } else {
            Ok(payload)
        }
    }

    /// The plaintext of what [`Sealer::seal`] made. `max_len` bounds decompression.
    pub fn open(&self, sealed: &[u8], max_len: usize) -> Result<Vec<u8>, CryptoError> {
        if self.encrypted() {
            let ids = self
                .identities
                .as_ref()
                .ok_or(CryptoError::IdentityRequired)?;
            let payload = Zeroizing::new(age_decrypt(ids, sealed)?);
            decode_payload(&payload, max_len)
        } else {
            decode_payload(sealed, max_len)
        }
    }
}

/// Compresses blob payloads with one reused zstd context: creating a context per blob
/// costs more than compressing a small blob. One per archiver worker.
pub struct BlobCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    /// A fast context for the compressibility probe.
    probe: zstd::bulk::Compressor<'static>,
    sample: Vec<u8>,
}

/// Chunks at least this long are probed before being compressed whole.
const PROBE_MIN: usize = 64 << 10;
/// The probe compresses this many slices of `PROBE_SLICE` bytes, spread over the chunk.
const PROBE_SLICES: usize = 4;
const PROBE_SLICE: usize = 4 << 10;

impl BlobCompressor {
    pub fn new(level: i32) -> Result<BlobCompressor, CryptoError> {
        let ctx = |level| {
            zstd::bulk::Compressor::new(level)
                .map_err(|e| CryptoError::Encrypt(format!("zstd: {e}")))
        };
        Ok(BlobCompressor {
            zstd: ctx(level)?,
            probe: ctx(1)?,
            sample: Vec::with_capacity(PROBE_SLICES * PROBE_SLICE),
        })
    }

    /// Whether `raw` looks incompressible (encrypted, compressed or random data): four
    /// 4 KiB slices spread over it, compressed at level 1, gain less than 3 %. Compressing
    /// such a chunk whole at the repository's level would cost as much time as the rest
    /// of the pipeline together for nothing (measured: zstd -3 spends 0.45 s on 384 MiB of
    /// random data, the probe about a hundredth of that). A chunk that is random where
    /// sampled and compressible elsewhere is stored raw: a little space lost, never data.
    fn looks_incompressible(&mut self, raw: &[u8]) -> bool {
        if raw.len() < PROBE_MIN {
            return false;
        }
        self.sample.clear();
        let stride = raw.len() / PROBE_SLICES;
        for i in 0..PROBE_SLICES {
            let at = i * stride;
            self.sample
                .extend_from_slice(&raw[at..at + PROBE_SLICE.min(stride)]);
        }
        match self.probe.compress(&self.sample) {
            Ok(c) => c.len() * 100 >= self.sample.len() * 97,
            Err(_) => false,
        }
    }

    /// Writes `codec ‖ data` for `raw` into `out` (cleared first; its capacity is reused).
    pub fn compress_into(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        out.clear();
        if !self.looks_incompressible(raw) {
            out.resize(1 + zstd::zstd_safe::compress_bound(raw.len()), 0);
            out[0] = CODEC_ZSTD;
            let n = self
                .zstd
                .compress_to_buffer(raw, &mut out[1..])
                .map_err(|e| CryptoError::Encrypt(format!("zstd: {e}")))?;
            // Keep incompressible data raw: decompressing it would only cost time.
            if n + n / 64 < raw.len() {
                out.truncate(1 + n);
                return Ok(());
            }
            out.clear();
        }
        out.push(CODEC_RAW);
        out.extend_from_slice(raw);
        Ok(())
    }
}

/// The plaintext of a `codec ‖ data` payload. `max_len` bounds decompression so a corrupt
/// or hostile blob cannot exhaust memory.
pub fn decode_payload(payload: &[u8], max_len: usize) -> Result<Vec<u8>, CryptoError> {
    match payload.split_first() {
        Some((&CODEC_RAW, rest)) if rest.len() <= max_len => Ok(rest.to_vec()),
        Some((&CODEC_RAW, rest)) => Err(CryptoError::Decompress(format!(
            "{} bytes exceed the limit of {max_len}",
            rest.len()
        ))),
        Some((&CODEC_ZSTD, rest)) => zstd::bulk::decompress(rest, max_len)
            .map_err(|e| CryptoError::Decompress(e.to_string())),
        _ => Err(CryptoError::BadCodec),
    }
}

/// Bytes the AEAD adds to a sealed blob (the Poly1305 tag).
pub const TAG_LEN: usize = 16;
/// Domain separation for the AAD, so a blob sealed by anything else never opens as one.
const AAD_PREFIX: &[u8] = b"backuphub-blob-v2";

/// A pack's data key, unwrapped. Zeroized when dropped.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    fn random() -> DataKey {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(k.as_mut()).expect("the OS random source is available");
        DataKey(k)
    }

    /// Unwraps an age-wrapped data key.
    pub fn unwrap(identities: &Identities, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let plain = Zeroizing::new(age_decrypt(identities, wrapped)?);
        let bytes: [u8; 32] = plain[..]
            .try_into()
            .map_err(|_| CryptoError::BadPackKey(plain.len()))?;
        Ok(DataKey(Zeroizing::new(bytes)))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }

    /// Encrypts `buf` (a `codec ‖ data` payload) in place and appends the tag. The nonce
    /// is the id's first 12 bytes: under one pack key the same id always means the same
    /// plaintext (ids are keyed hashes of it), so a repeated nonce repeats only itself.
    pub fn seal_in_place(
        &self,
        kind: u8,
        id: &[u8; 32],
        buf: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let tag = self
            .cipher()
            .encrypt_in_place_detached(Nonce::from_slice(&id[..12]), &aad(kind, id), buf)
            .map_err(|_| CryptoError::Encrypt("blob too large for the AEAD".into()))?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Checks and decrypts a sealed blob in place, leaving its `codec ‖ data` payload.
    /// A changed byte, kind or id, or another pack's key all fail the tag.
    pub fn open_in_place(
        &self,
        kind: u8,
        id: &[u8; 32],
        buf: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        let Some(body_len) = buf.len().checked_sub(TAG_LEN) else {
            return Err(CryptoError::BadTag);
        };
        let tag = Tag::clone_from_slice(&buf[body_len..]);
        buf.truncate(body_len);
        self.cipher()
            .decrypt_in_place_detached(Nonce::from_slice(&id[..12]), &aad(kind, id), buf, &tag)
            .map_err(|_| CryptoError::BadTag)
    }
}

fn aad(kind: u8, id: &[u8; 32]) -> [u8; AAD_PREFIX.len() + 33] {
    let mut out = [0u8; AAD_PREFIX.len() + 33];
    out[..AAD_PREFIX.len()].copy_from_slice(AAD_PREFIX);
    out[AAD_PREFIX.len()] = kind;
    out[AAD_PREFIX.len() + 1..].copy_from_slice(id);
    out
}

/// The key a pack is being written under: the data key (only in the writing worker, and
/// zeroized when the pack is finished) and its age-wrapped form for the pack's header.
pub struct PackKey {
    key: DataKey,
    wrapped: Vec<u8>,
}

impl PackKey {
    /// A fresh random key, wrapped to `recipients` (one age file of 32 bytes).
    pub fn generate(recipients: &[Recipient]) -> Result<PackKey, CryptoError> {
        let key = DataKey::random();
        let wrapped = age_encrypt(recipients, &key.0[..])?;
        Ok(PackKey { key, wrapped })
    }

    pub fn key(&self) -> &DataKey {
        &self.key
    }

    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    fn keypair() -> (Recipient, Identities) {
        let id = age::x25519::Identity::generate();
        let r: Recipient = id.to_public().to_string().parse().unwrap();
        (r, Identities(Arc::new(vec![Box::new(id)])))
    }

    #[test]
    fn plain_round_trip_compresses_text_and_keeps_random_raw() {
        let s = Sealer::new(3, vec![], None);
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let sealed = s.seal(&text).unwrap();
        assert!(sealed.len() < text.len() / 4);
        assert_eq!(s.open(&sealed, 1 << 20).unwrap(), text);

        let mut random = vec![0u8; 4096];
        getrandom::fill(&mut random).unwrap();
        let sealed = s.seal(&random).unwrap();
        assert_eq!(sealed[0], CODEC_RAW);
        assert_eq!(s.open(&sealed, 1 << 20).unwrap(), random);
    }

    #[test]
    fn encrypted_round_trip_needs_the_identity() {
        let (r, ids) = keypair();
        let writer = Sealer::new(3, vec![r.clone()], None);
        let sealed = writer.seal(b"marker-secret-text").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"marker"));
        assert!(matches!(
            writer.open(&sealed, 1024),
            Err(CryptoError::IdentityRequired)
        ));
        let reader = Sealer::new(3, vec![r], Some(ids));
        assert_eq!(reader.open(&sealed, 1024).unwrap(), b"marker-secret-text");

        let (_, other) = keypair();
        let wrong = Sealer::new(3, writer.recipients.to_vec(), Some(other));
        assert!(matches!(
            wrong.open(&sealed, 1024),
            Err(CryptoError::WrongIdentity)
        ));
    }

    #[test]
    fn pack_keys_unwrap_only_with_a_matching_identity() {
        let (r, ids) = keypair();
        let k = PackKey::generate(std::slice::from_ref(&r)).unwrap();
        let mut buf = b"\0payload".to_vec();
        k.key().seal_in_place(0, &[7; 32], &mut buf).unwrap();
        assert_eq!(buf.len(), 8 + TAG_LEN);
        let back = DataKey::unwrap(&ids, k.wrapped()).unwrap();
        back.open_in_place(0, &[7; 32], &mut buf).unwrap();
        assert_eq!(buf, b"\0payload");
        let (_, other) = keypair();
        assert!(matches!(
            DataKey::unwrap(&other, k.wrapped()),
            Err(CryptoError::WrongIdentity)
        ));
        // A wrapped secret of the wrong size is refused, not truncated or padded.
        let short = age_encrypt(&[r], &[1u8; 31]).unwrap();
        assert!(matches!(
            DataKey::unwrap(&ids, &short),
            Err(CryptoError::BadPackKey(31))
        ));
        // Too short to hold a tag: an error, not a panic.
        let mut tiny = vec![1u8; 3];
        assert!(matches!(
            back.open_in_place(0, &[7; 32], &mut tiny),
            Err(CryptoError::BadTag)
        ));
    }

    #[test]
    fn the_compressor_keeps_incompressible_data_raw_and_decodes_within_bounds() {
        let mut c = BlobCompressor::new(3).unwrap();
        let mut out = Vec::new();
        let text = b"abcabcabc".repeat(1000);
        c.compress_into(&text, &mut out).unwrap();
        assert_eq!(out[0], CODEC_ZSTD);
        assert_eq!(decode_payload(&out, text.len()).unwrap(), text);
        assert!(decode_payload(&out, text.len() - 1).is_err());
        let mut random = vec![0u8; 4096];
        getrandom::fill(&mut random).unwrap();
        c.compress_into(&random, &mut out).unwrap();
        assert_eq!(out[0], CODEC_RAW);
        assert_eq!(decode_payload(&out, 4096).unwrap(), random);
        assert!(decode_payload(&out, 4095).is_err());
        assert!(matches!(decode_payload(&[], 1), Err(CryptoError::BadCodec)));
        assert!(matches!(
            decode_payload(&[9, 1], 1),
            Err(CryptoError::BadCodec)
        ));
    }

    #[test]
    fn the_probe_skips_random_chunks_and_keeps_compressible_ones() {
        let mut c = BlobCompressor::new(3).unwrap();
        let mut out = Vec::new();
        let mut random = vec![0u8; 1 << 20];
        getrandom::fill(&mut random).unwrap();
        assert!(c.looks_incompressible(&random));
        c.compress_into(&random, &mut out).unwrap();
        assert_eq!(out[0], CODEC_RAW);
        assert_eq!(decode_payload(&out, 1 << 20).unwrap(), random);
        // Text, and random data with compressible stretches where the probe samples.
        let text: Vec<u8> = (0..(1 << 20) / 16)
            .flat_map(|i: u32| format!("row {i:08} ok;\n").into_bytes())
            .collect();
        assert!(!c.looks_incompressible(&text));
        c.compress_into(&text, &mut out).unwrap();
        assert_eq!(out[0], CODEC_ZSTD);
        let mut mixed = random.clone();
        for i in 0..4 {
            let at = i * mixed.len() / 4;
            mixed[at..at + (64 << 10)].fill(b'x');
        }
        assert!(!c.looks_incompressible(&mixed));
        // Below the probe's minimum the chunk is compressed as always.
        assert!(!c.looks_incompressible(&random[..1000]));
    }

    #[test]
    fn bad_recipients_are_named() {
        let err = "nonsense".parse::<Recipient>().err().unwrap();
        assert!(err.to_string().contains("nonsense"));
        assert!("age1xyz".parse::<Recipient>().is_err());
    }

    #[test]
    fn key_material_round_trip() {
        let (r, ids) = keypair();
        let k = KeyMaterial::generate();
        let sealed = k.seal(&[r]).unwrap();
        let back = KeyMaterial::open(&ids, &sealed).unwrap();
        assert_eq!(back.id_key, k.id_key);
        assert_eq!(format!("{back:?}"), "KeyMaterial(<redacted>)");
    }
}
