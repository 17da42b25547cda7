//! The value codec: serde with bincode 2 (or postcard with the `postcard` feature).
//!
//! This is the only module that knows which format is on the wire, and it
//! knows nothing else: errors are the format's own messages, which the
//! callers (`handles.rs`, `send.rs`) turn into the crate's errors. (bincode
//! shows its errors as their `Debug` form, so a message of serde's own —
//! what a failing `Serialize` or `Deserialize` said — is taken out of it.)

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
        .map_err(encode_message);
    #[cfg(feature = "postcard")]
    let result = {
        // postcard takes the vector and drops it on error: put back as many
        // bytes as there were (the caller's header space), so a frame whose
        // value failed to encode stays usable.
        let len = buf.len();
        postcard::to_extend(value, std::mem::take(buf))
            .map(|out| *buf = out)
            .map_err(|e| {
                buf.resize(len, 0);
                e.to_string()
            })
    };
    result
}

/// An encode error's text: a `Serialize` impl's own message as it is
/// (bincode's `Display` would show it as `OtherString("…")`).
#[cfg(not(feature = "postcard"))]
fn encode_message(e: bincode::error::EncodeError) -> String {
    match e {
        bincode::error::EncodeError::OtherString(message) => message,
        e => e.to_string(),
    }
}

/// A decode error's text: a `Deserialize` impl's own message as it is.
#[cfg(not(feature = "postcard"))]
fn decode_message(e: bincode::error::DecodeError) -> String {
    match e {
        bincode::error::DecodeError::OtherString(message) => message,
        e => e.to_string(),
    }
}

/// bincode claims at most this many bytes per byte it reads: a varint
/// `u128` claims 16 (its size) for as little as one byte read; a string or
/// byte buffer claims its length, all of which it reads.
#[cfg(not(feature = "postcard"))]
const CLAIM_PER_BYTE: usize = 16;

/// Decodes with a limit on what the decoder may claim (and so allocate:
/// bincode allocates a string's or a byte buffer's whole announced length
/// before reading it) in proportion to the input: the smallest of a ladder
/// of limits (each 4 times the last, up to [`MAX_VALUE_LEN`]) that is at
/// least [`CLAIM_PER_BYTE`] times its length. Without it, a few bytes that
/// announce a 2 GiB string make the receiver allocate 2 GiB.
#[cfg(not(feature = "postcard"))]
fn bincode_decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    fn with<T: DeserializeOwned, const LIMIT: usize>(
        bytes: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        let config = bincode::config::standard().with_limit::<LIMIT>();
        bincode::serde::decode_from_slice(bytes, config)
    }
    match bytes.len().saturating_mul(CLAIM_PER_BYTE) {
        n if n <= 0x1_0000 => with::<T, 0x1_0000>(bytes),
        n if n <= 0x4_0000 => with::<T, 0x4_0000>(bytes),
        n if n <= 0x10_0000 => with::<T, 0x10_0000>(bytes),
        n if n <= 0x40_0000 => with::<T, 0x40_0000>(bytes),
        n if n <= 0x100_0000 => with::<T, 0x100_0000>(bytes),
        n if n <= 0x400_0000 => with::<T, 0x400_0000>(bytes),
        n if n <= 0x1000_0000 => with::<T, 0x1000_0000>(bytes),
        n if n <= 0x4000_0000 => with::<T, 0x4000_0000>(bytes),
        _ => bincode::serde::decode_from_slice(bytes, config()),
    }
}

/// Decodes one value from the start of `bytes`; returns it and the bytes it used.
pub(crate) fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), String> {
    #[cfg(not(feature = "postcard"))]
    let result = bincode_decode(bytes).map_err(decode_message);
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
