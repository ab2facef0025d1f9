//! Content identifiers: 32-byte BLAKE3 digests, keyed in encrypted repositories.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 32-byte identifier of a blob, pack or snapshot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("not a 64-character hex identifier: {0:?}")]
pub struct ParseIdError(String);

impl Id {
    pub fn of(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as listings show them.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Id> {
        bytes.try_into().ok().map(Id)
    }
}

impl FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| ParseIdError(s.chars().take(80).collect()))?;
        Ok(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

// Hex in human-readable formats (JSON manifests), raw bytes in CBOR trees: trees hold
// one id per chunk, so their size matters.
impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(D::Error::custom)
        } else {
            let b = serde_bytes::ByteBuf::deserialize(d)?;
            Id::from_slice(&b).ok_or_else(|| D::Error::invalid_length(b.len(), &"32 bytes"))
        }
    }
}

/// How chunk ids are derived. Keyed in encrypted repositories so that the disk does not
/// reveal plaintext hashes (which would confirm the presence of known files).
#[derive(Clone)]
pub enum IdHasher {
    Plain,
    Keyed([u8; 32]),
}

impl IdHasher {
    pub fn id(&self, data: &[u8]) -> Id {
        match self {
            IdHasher::Plain => Id::of(data),
            IdHasher::Keyed(key) => Id(*blake3::keyed_hash(key, data).as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_bad_input() {
        let id = Id::of(b"hello");
        assert_eq!(id.to_hex().parse::<Id>().unwrap(), id);
        assert!("zz".parse::<Id>().is_err());
        assert_eq!(id.short().len(), 8);
    }

    #[test]
    fn keyed_ids_differ_from_plain() {
        let plain = IdHasher::Plain.id(b"x");
        let keyed = IdHasher::Keyed([7; 32]).id(b"x");
        assert_ne!(plain, keyed);
        assert_eq!(plain, Id::of(b"x"));
    }

    #[test]
    fn serde_forms() {
        let id = Id::of(b"a");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.to_hex()));
        let mut cbor = Vec::new();
        ciborium::into_writer(&id, &mut cbor).unwrap();
        assert_eq!(cbor.len(), 34);
        let back: Id = ciborium::from_reader(&cbor[..]).unwrap();
        assert_eq!(back, id);
    }
}
