//! Canonical encoding: BCS for everything that is hashed or signed.
//!
//! BCS (Binary Canonical Serialization) has exactly one encoding per value, so a value's bytes
//! can be hashed and signed, stored as received, and re-derived by anyone. Decoding is bounded:
//! the input size is capped before anything is parsed, container nesting is capped, and
//! length prefixes cannot make the decoder allocate more than the input could hold (serde caps
//! pre-allocation). Decoding never panics on hostile input; it returns [`DecodeError`].
//!
//! Types whose invariants cannot be expressed in their shape (a composite key's canonical order,
//! an X.500 name's character rules, ...) validate themselves while decoding, so a decoded value
//! is always a valid one.

use serde::{Serialize, de::DeserializeOwned};

/// The deepest nesting of containers accepted when decoding (BCS's own maximum is 500).
pub const MAX_DECODE_DEPTH: usize = 64;

/// The largest input accepted by [`decode`] unless a caller passes its own bound: 16 MiB.
pub const DEFAULT_MAX_DECODE_BYTES: usize = 16 * 1024 * 1024;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the caller allows.
    #[error("input of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes offered.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The bytes are not a canonical encoding of the expected type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The type being decoded.
        what: &'static str,
        /// What the decoder found wrong.
        reason: String,
    },
}

/// Encodes `value` canonically.
///
/// Encoding a value of a Treaty type cannot fail (they contain no maps with non-canonical keys
/// and nothing deeper than BCS allows); the error path exists for foreign types.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    match bcs::to_bytes(value) {
        Ok(b) => b,
        // Only reachable for values nested deeper than BCS's limit of 500, which no Treaty type
        // permits (composite keys and states are depth-checked on construction).
        Err(e) => panic!("canonical encoding failed: {e}"),
    }
}

/// Encodes `value` canonically, reporting failure instead of panicking (for app-defined types).
pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    bcs::to_bytes(value).map_err(|e| e.to_string())
}

/// Decodes a canonical encoding of `T`, refusing inputs over [`DEFAULT_MAX_DECODE_BYTES`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_bounded(bytes, DEFAULT_MAX_DECODE_BYTES)
}

/// Decodes a canonical encoding of `T`, refusing inputs longer than `max_bytes`.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    bcs::from_bytes_with_limit(bytes, MAX_DECODE_DEPTH)
        .map_err(|e| DecodeError::Malformed { what: short_type_name::<T>(), reason: e.to_string() })
}

/// The last path segment of a type name, for error messages.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = core::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// Serde support for byte arrays longer than 32 (serde's built-in limit), encoded as a
/// fixed-length tuple: no length prefix, exactly as BCS encodes `[u8; N]`.
pub(crate) mod byte_array {
    use core::fmt;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(N)?;
        for b in v {
            t.serialize_element(b)?;
        }
        t.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut out = [0u8; N];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(N, V::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let err = decode_bounded::<Vec<u8>>(&[0u8; 100], 10).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: 100, limit: 10 });
    }

    #[test]
    fn trailing_bytes_and_huge_lengths_are_malformed() {
        let mut b = encode(&vec![1u8, 2, 3]);
        b.push(0);
        assert!(matches!(decode::<Vec<u8>>(&b), Err(DecodeError::Malformed { .. })));
        // A length prefix claiming 2^31-1 elements with no data must fail, not allocate.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x07];
        assert!(matches!(decode::<Vec<u64>>(&huge), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn deep_nesting_is_refused() {
        // Vec<Vec<...>> nested 100 deep, each holding one element.
        let bytes = vec![1u8; 100].into_iter().chain([0u8]).collect::<Vec<_>>();
        type Deep = Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<Vec<u8>>>>>>>>>>;
        // 10 levels is fine when well-formed...
        let ok: Vec<u8> = vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0];
        assert!(decode::<Deep>(&ok).is_ok());
        // ...and garbage never panics.
        let _ = decode::<Deep>(&bytes);
    }
}
