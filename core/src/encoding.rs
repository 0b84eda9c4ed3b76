//! The bincode options of schema v1, shared by the event codec and the digests that must not
//! change while the schema does not (approval action digests). A leaf module: it knows no
//! type of the schema.

use bincode::Options;

/// Upper bound on one encoded event; decoding refuses anything claiming more.
pub const MAX_EVENT_BYTES: u64 = 64 * 1024 * 1024;

/// Varint integers, little endian, a size limit, no trailing bytes: arbitrary input is
/// rejected with an error instead of a huge allocation or a panic.
pub(crate) fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .with_limit(MAX_EVENT_BYTES)
        .reject_trailing_bytes()
}

/// The schema-v1 encoding of any value of the schema (e.g. an `ApprovalRequest`), for
/// digests that must not change while the schema does not.
pub fn canonical_bytes<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Our own plain data types encode into a Vec.
    options().serialize(value).expect("schema values encode")
}
