//! The value codec: serde with bincode 2 (or postcard with the `postcard` feature).
//!
//! This is the only module that knows which format is on the wire, and it
//! knows nothing else: errors are the format's own messages, which the
//! callers (`handles.rs`, `send.rs`) turn into the crate's errors.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest value the decoder will allocate for (a frame's limit).
pub(crate) const MAX_VALUE_LEN: usize = 1 << 31;

#[cfg(not(feature = "postcard"))]
fn config() -> impl bincode::config::Config {
    // The limit bounds what a length prefix may make the decoder allocate.
    bincode::config::standard().with_limit::<MAX_VALUE_LEN>()
}

/// Appends the encoding of `value` to `buf`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    #[cfg(not(feature = "postcard"))]
    let result = bincode::serde::encode_into_std_write(value, buf, config())
        .map(drop)
        .map_err(|e| e.to_string());
    #[cfg(feature = "postcard")]
    let result = postcard::to_extend(value, std::mem::take(buf))
        .map(|out| *buf = out)
        .map_err(|e| e.to_string());
    result
}

/// Decodes one value from the start of `bytes`; returns it and the bytes it used.
pub(crate) fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    #[cfg(not(feature = "postcard"))]
    let result = bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string());
    #[cfg(feature = "postcard")]
    let result = postcard::take_from_bytes(bytes)
        .map(|(value, rest)| (value, bytes.len() - rest.len()))
        .map_err(|e| e.to_string());
    result
}

/// Decodes exactly one value that fills `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        ));
    }
    Ok(value)
}
