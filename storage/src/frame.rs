//! Record framing: every value annal writes (events and run metadata) is wrapped in a frame
//! so a torn write or a flipped bit is detected on read, never silently decoded.
//!
//! ```text
//! format 1 (metadata, checkpoints; events written before chaining)
//! offset  size  field
//! 0       1     format version: 1
//! 1       4     crc32 (IEEE), little-endian, over bytes [0..1] ++ [5..9] ++ payload
//! 5       4     payload length, little-endian
//! 9       len   payload
//!
//! format 2 (events: linked into their run's hash chain, see `chain`)
//! 0       1     format version: 2
//! 1       4     crc32 (IEEE), little-endian, over bytes [0..1] ++ [5..9] ++ link ++ payload
//! 5       4     payload length, little-endian
//! 9       32    link: the hash of the run's previous record (`chain::record_hash`)
//! 41      len   payload
//! ```
//!
//! The CRC also covers the format byte and the length, so a flipped length is caught even when
//! the resulting frame happens to look well-sized. The CRC catches accidents; the link is what
//! catches edits (an edited record no longer hashes to what its successor links to).

use crc32fast::Hasher;

/// The frame format of metadata and checkpoints (and of events written before chaining).
pub const FORMAT_V1: u8 = 1;

/// The frame format of events: a format-1 frame with the link to the previous record.
pub const FORMAT_V2_LINKED: u8 = 2;

/// Bytes in front of the payload of a format-1 frame: format (1) + crc (4) + len (4).
pub const HEADER_LEN: usize = 9;

/// Bytes of a format-2 frame's link.
pub const LINK_LEN: usize = annal_core::chain::LINK_LEN;

/// Why a frame could not be decoded. Carried inside [`crate::Error::Corrupt`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The stored checksum does not match the bytes.
    BadCrc {
        /// Checksum stored in the frame header.
        expected: u32,
        /// Checksum computed over the bytes that are there.
        actual: u32,
    },
    /// Fewer bytes than the header or the declared length needs (a torn write).
    Truncated {
        /// Bytes the frame needs.
        needed: u64,
        /// Bytes that are there.
        available: u64,
    },
    /// The format byte names a version this build does not know.
    UnknownFormat(u8),
    /// More bytes than the header declares.
    LengthMismatch {
        /// Payload length from the header.
        declared: u64,
        /// Payload bytes actually present.
        actual: u64,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadCrc { expected, actual } => {
                write!(
                    f,
                    "bad crc: stored {expected:#010x}, computed {actual:#010x}"
                )
            }
            FrameError::Truncated { needed, available } => {
                write!(f, "truncated: needs {needed} bytes, {available} present")
            }
            FrameError::UnknownFormat(v) => write!(f, "unknown frame format version {v}"),
            FrameError::LengthMismatch { declared, actual } => {
                write!(
                    f,
                    "length mismatch: header says {declared} payload bytes, {actual} present"
                )
            }
        }
    }
}

fn checksum(format: u8, len: [u8; 4], body: &[u8]) -> u32 {
    let mut hasher = Hasher::new();
    hasher.update(&[format]);
    hasher.update(&len);
    hasher.update(body);
    hasher.finalize()
}

/// Wraps `payload` in a version-1 frame.
///
/// # Panics
/// If the payload is 4 GiB or larger; callers bound sizes far below that.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload must be below 4 GiB");
    let len = len.to_le_bytes();
    let crc = checksum(FORMAT_V1, len, payload);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
    out
}

/// Wraps `payload` in a format-2 frame that links it to the previous record of its run.
///
/// # Panics
/// If the payload is 4 GiB or larger; callers bound sizes far below that.
pub fn encode_linked(link: &[u8; LINK_LEN], payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame payload must be below 4 GiB");
    let len = len.to_le_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + LINK_LEN + payload.len());
    out.push(FORMAT_V2_LINKED);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&len);
    out.extend_from_slice(link);
    out.extend_from_slice(payload);
    let crc = checksum(FORMAT_V2_LINKED, len, &out[HEADER_LEN..]);
    out[1..5].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a frame of either format and returns its payload. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<&[u8], FrameError> {
    decode_linked(bytes).map(|(_, payload)| payload)
}

/// Checks a frame of either format and returns its link (format 2) and payload. Never
/// panics, whatever the input.
pub fn decode_linked(bytes: &[u8]) -> Result<(Option<&[u8; LINK_LEN]>, &[u8]), FrameError> {
    let available = bytes.len() as u64;
    let Some((header, body)) = bytes.split_at_checked(HEADER_LEN) else {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN as u64,
            available,
        });
    };
    let format = header[0];
    let link_len = match format {
        FORMAT_V1 => 0,
        FORMAT_V2_LINKED => LINK_LEN,
        other => return Err(FrameError::UnknownFormat(other)),
    };
    let stored_crc = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let len_bytes = [header[5], header[6], header[7], header[8]];
    let declared = u64::from(u32::from_le_bytes(len_bytes));
    let actual = (body.len() as u64).saturating_sub(link_len as u64);
    if (body.len() as u64) < link_len as u64 + declared {
        return Err(FrameError::Truncated {
            needed: (HEADER_LEN + link_len) as u64 + declared,
            available,
        });
    }
    if actual > declared {
        return Err(FrameError::LengthMismatch { declared, actual });
    }
    let computed = checksum(format, len_bytes, body);
    if computed != stored_crc {
        return Err(FrameError::BadCrc {
            expected: stored_crc,
            actual: computed,
        });
    }
    match body.split_first_chunk::<LINK_LEN>() {
        Some((link, payload)) if format == FORMAT_V2_LINKED => Ok((Some(link), payload)),
        _ => Ok((None, body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let framed = encode(b"hello");
        assert_eq!(framed.len(), HEADER_LEN + 5);
        assert_eq!(decode(&framed), Ok(&b"hello"[..]));
        assert_eq!(decode(&encode(b"")), Ok(&b""[..]));
    }

    #[test]
    fn each_damage_has_its_reason() {
        let framed = encode(b"payload");
        assert!(matches!(
            decode(&framed[..4]),
            Err(FrameError::Truncated {
                needed: 9,
                available: 4
            })
        ));
        assert!(matches!(
            decode(&framed[..framed.len() - 1]),
            Err(FrameError::Truncated {
                needed: 16,
                available: 15
            })
        ));
        let mut longer = framed.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(FrameError::LengthMismatch {
                declared: 7,
                actual: 8
            })
        );
        let mut bad_version = framed.clone();
        bad_version[0] = 7;
        assert_eq!(decode(&bad_version), Err(FrameError::UnknownFormat(7)));
        let mut flipped = framed.clone();
        flipped[HEADER_LEN + 2] ^= 0x10;
        assert!(matches!(decode(&flipped), Err(FrameError::BadCrc { .. })));
    }

    #[test]
    fn linked_frames_round_trip_and_carry_their_link() {
        let link = [7u8; LINK_LEN];
        let framed = encode_linked(&link, b"event");
        assert_eq!(framed.len(), HEADER_LEN + LINK_LEN + 5);
        assert_eq!(decode(&framed), Ok(&b"event"[..]));
        assert_eq!(decode_linked(&framed), Ok((Some(&link), &b"event"[..])));
        assert_eq!(decode_linked(&encode(b"old")), Ok((None, &b"old"[..])));
        // The link is under the CRC: an edited link is damage, not another link.
        let mut edited = framed.clone();
        edited[HEADER_LEN + 3] ^= 1;
        assert!(matches!(decode(&edited), Err(FrameError::BadCrc { .. })));
        assert!(matches!(
            decode(&framed[..HEADER_LEN + 10]),
            Err(FrameError::Truncated { needed: 46, .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_single_bit_flip_of_a_linked_frame_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut framed = encode_linked(&[3; LINK_LEN], &payload);
            let i = at.index(framed.len());
            framed[i] ^= 1 << bit;
            prop_assert!(decode(&framed).is_err());
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut framed = encode(&payload);
            let i = at.index(framed.len());
            framed[i] ^= 1 << bit;
            prop_assert!(decode(&framed).is_err());
        }
    }
}
