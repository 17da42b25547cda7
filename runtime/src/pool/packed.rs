//! The wire form of a chunk's items and of its outcomes: one byte string
//! that holds every item's length, handle count and bytes, then the
//! handles, instead of a struct per item. A chunk of thousands of small
//! tasks then encodes and decodes in a few passes over memory (used
//! through `#[serde(with = …)]` on the fields of [`Chunk`] and
//! [`Msg::Done`]).
//!
//! The byte string: the item count (u32, little-endian), a flags byte,
//! each item's length (u32), each item's handle count (u16, only if
//! [`FDS`] is set), each outcome's tag (u8, only if [`TAGS`] is set: 0 for
//! a value, 1 for one of the outcomes that follow the handles), then the
//! items' bytes one after another. Everything is checked against what is
//! there before it is used.
//!
//! [`Chunk`]: super::proto::Chunk
//! [`Msg::Done`]: super::proto::Msg::Done

use std::fmt;

use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};

use super::proto::{Bytes, Item, Outcome};
use crate::Fd;

/// Per-item handle counts follow the lengths.
const FDS: u8 = 1;
/// Per-item tags follow (outcomes that are not all values).
const TAGS: u8 = 2;

const VALUE: u8 = 0;
const OTHER: u8 = 1;

/// A byte string on the wire.
struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Builds the byte string for `items` (an outcome's tag from `tags`).
fn pack<E: serde::ser::Error>(items: &[Option<&Item>]) -> Result<Vec<u8>, E> {
    let n = u32::try_from(items.len()).map_err(|_| E::custom("too many items in one chunk"))?;
    let values = items.iter().flatten();
    let with_fds = values.clone().any(|item| !item.fds.is_empty());
    let tagged = items.iter().any(Option::is_none);
    let total: usize = values.map(|item| item.bytes.as_slice().len()).sum();
    let mut blob = Vec::with_capacity(5 + items.len() * 7 + total);
    blob.extend_from_slice(&n.to_le_bytes());
    blob.push(if with_fds { FDS } else { 0 } | if tagged { TAGS } else { 0 });
    for item in items {
        let len = item.map_or(0, |item| item.bytes.as_slice().len());
        let len = u32::try_from(len).map_err(|_| E::custom("a value of 4 GiB or more"))?;
        blob.extend_from_slice(&len.to_le_bytes());
    }
    if with_fds {
        for item in items {
            let count = item.map_or(0, |item| item.fds.len());
            let count = u16::try_from(count).map_err(|_| E::custom("too many handles"))?;
            blob.extend_from_slice(&count.to_le_bytes());
        }
    }
    if tagged {
        blob.extend(
            items
                .iter()
                .map(|i| if i.is_some() { VALUE } else { OTHER }),
        );
    }
    for item in items.iter().flatten() {
        blob.extend_from_slice(item.bytes.as_slice());
    }
    Ok(blob)
}

/// One item read from the byte string: its bytes and handle count, or
/// `None` for an outcome that is not a value.
type Unpacked = Vec<Option<(Bytes, usize)>>;

/// What is left of a byte string being read.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// The next `n` bytes, if there are that many.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
}

/// Reads the byte string [`pack`] made.
fn unpack<E: de::Error>(blob: &[u8]) -> Result<Unpacked, E> {
    read(blob).ok_or_else(|| E::custom("malformed pool chunk"))
}

fn read(blob: &[u8]) -> Option<Unpacked> {
    let mut c = Cursor(blob);
    let n = u32::from_le_bytes(c.take(4)?.try_into().ok()?) as usize;
    let flags = c.take(1)?[0];
    if flags & !(FDS | TAGS) != 0 {
        return None;
    }
    // Checked against what is there before anything of its size is made.
    let lens = c.take(n.checked_mul(4)?)?;
    let counts = if flags & FDS != 0 {
        Some(c.take(n.checked_mul(2)?)?)
    } else {
        None
    };
    let tags = if flags & TAGS != 0 {
        Some(c.take(n)?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = 4 * i;
        let len = u32::from_le_bytes([lens[at], lens[at + 1], lens[at + 2], lens[at + 3]]);
        let count = counts.map_or(0, |c| {
            usize::from(u16::from_le_bytes([c[2 * i], c[2 * i + 1]]))
        });
        match tags.map_or(VALUE, |t| t[i]) {
            VALUE => out.push(Some((Bytes::from_slice(c.take(len as usize)?), count))),
            OTHER if len == 0 && count == 0 => out.push(None),
            _ => return None,
        }
    }
    // Every byte is some item's.
    c.0.is_empty().then_some(out)
}

/// Hands each item its handles, in order.
fn attach<E: de::Error>(unpacked: Unpacked, fds: Vec<Fd>) -> Result<Vec<Option<Item>>, E> {
    let wanted: usize = unpacked.iter().flatten().map(|(_, count)| count).sum();
    if wanted != fds.len() {
        return Err(E::custom("malformed pool chunk: its handles do not add up"));
    }
    let mut fds = fds.into_iter();
    Ok(unpacked
        .into_iter()
        .map(|slot| {
            slot.map(|(bytes, count)| Item {
                bytes,
                fds: fds.by_ref().take(count).collect(),
            })
        })
        .collect())
}

/// Reads the byte string lent by the decoder.
struct BlobVisitor;

impl Visitor<'_> for BlobVisitor {
    type Value = Unpacked;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a packed pool chunk")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Unpacked, E> {
        unpack(v)
    }
}

struct Blob;

impl<'de> DeserializeSeed<'de> for Blob {
    type Value = Unpacked;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Unpacked, D::Error> {
        d.deserialize_bytes(BlobVisitor)
    }
}

/// `#[serde(with = "packed::items")]`: a chunk's items.
pub(crate) mod items {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(items: &[Item], s: S) -> Result<S::Ok, S::Error> {
        let slots: Vec<Option<&Item>> = items.iter().map(Some).collect();
        let blob = pack::<S::Error>(&slots)?;
        let fds: Vec<&Fd> = items.iter().flat_map(|item| &item.fds).collect();
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&ByteStr(&blob))?;
        t.serialize_element(&fds)?;
        t.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Item>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Item>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk's items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Item>, A::Error> {
                let missing = || de::Error::custom("malformed pool chunk");
                let unpacked = seq.next_element_seed(Blob)?.ok_or_else(missing)?;
                if unpacked.iter().any(Option::is_none) {
                    return Err(missing());
                }
                let fds: Vec<Fd> = seq.next_element()?.ok_or_else(missing)?;
                Ok(attach::<A::Error>(unpacked, fds)?
                    .into_iter()
                    .flatten()
                    .collect())
            }
        }
        d.deserialize_tuple(2, V)
    }
}

/// `#[serde(with = "packed::outcomes")]`: a chunk's outcomes (values
/// packed, the others after them as themselves).
pub(crate) mod outcomes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(outcomes: &[Outcome], s: S) -> Result<S::Ok, S::Error> {
        let slots: Vec<Option<&Item>> = outcomes
            .iter()
            .map(|o| match o {
                Outcome::Value(item) => Some(item),
                _ => None,
            })
            .collect();
        let blob = pack::<S::Error>(&slots)?;
        let fds: Vec<&Fd> = slots.iter().flatten().flat_map(|item| &item.fds).collect();
        let others: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| !matches!(o, Outcome::Value(_)))
            .collect();
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&ByteStr(&blob))?;
        t.serialize_element(&fds)?;
        t.serialize_element(&others)?;
        t.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Outcome>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Outcome>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk's outcomes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Outcome>, A::Error> {
                let missing = || de::Error::custom("malformed pool chunk");
                let unpacked = seq.next_element_seed(Blob)?.ok_or_else(missing)?;
                let fds: Vec<Fd> = seq.next_element()?.ok_or_else(missing)?;
                let others: Vec<Outcome> = seq.next_element()?.ok_or_else(missing)?;
                let slots = attach::<A::Error>(unpacked, fds)?;
                if slots.iter().filter(|s| s.is_none()).count() != others.len() {
                    return Err(missing());
                }
                let mut others = others.into_iter();
                let mut out = Vec::with_capacity(slots.len());
                for slot in slots {
                    out.push(match slot {
                        Some(item) => Outcome::Value(item),
                        None => others.next().ok_or_else(missing)?,
                    });
                }
                Ok(out)
            }
        }
        d.deserialize_tuple(3, V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::proto::FailKind;
    use crate::wire::codec;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct Items(#[serde(with = "items")] Vec<Item>);

    #[derive(Serialize, Deserialize)]
    struct Outcomes(#[serde(with = "outcomes")] Vec<Outcome>);

    fn item(bytes: &[u8]) -> Item {
        Item {
            bytes: Bytes::from_slice(bytes),
            fds: Vec::new(),
        }
    }

    #[test]
    fn items_and_outcomes_come_back_as_they_went() {
        let long = vec![9u8; 100];
        let items = vec![item(b""), item(b"abc"), item(&long)];
        let mut buf = Vec::new();
        codec::encode_into(&Items(items), &mut buf).unwrap();
        let back: Items = codec::decode(&buf).unwrap();
        let got: Vec<&[u8]> = back.0.iter().map(|i| i.bytes.as_slice()).collect();
        assert_eq!(got, [&b""[..], b"abc", &long]);

        let outcomes = vec![
            Outcome::Value(item(b"x")),
            Outcome::Failed {
                kind: FailKind::Decode,
                message: "no".into(),
            },
            Outcome::Value(item(&long)),
        ];
        let mut buf = Vec::new();
        codec::encode_into(&Outcomes(outcomes), &mut buf).unwrap();
        let back: Outcomes = codec::decode(&buf).unwrap();
        assert!(matches!(&back.0[0], Outcome::Value(i) if i.bytes.as_slice() == b"x"));
        assert!(matches!(&back.0[1], Outcome::Failed { message, .. } if message == "no"));
        assert!(matches!(&back.0[2], Outcome::Value(i) if i.bytes.as_slice() == &long[..]));
        assert_eq!(back.0.len(), 3);
    }

    #[test]
    fn a_malformed_blob_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        codec::encode_into(&Items(vec![item(b"abc"), item(b"defgh")]), &mut buf).unwrap();
        // Every truncation and every single-byte change decodes or fails;
        // none panics, and none asks for more memory than it was sent.
        for cut in 0..buf.len() {
            let _ = codec::decode::<Items>(&buf[..cut]);
        }
        for at in 0..buf.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = buf.clone();
                b[at] = v;
                let _ = codec::decode::<Items>(&b);
                let _ = codec::decode::<Outcomes>(&b);
            }
        }
        // A count far past what is there.
        assert!(unpack::<de::value::Error>(&[0xff, 0xff, 0xff, 0x7f, 0]).is_err());
        // Lengths that run past the bytes, and bytes left over.
        let mut blob = vec![1, 0, 0, 0, 0, 5, 0, 0, 0];
        blob.extend_from_slice(b"abcd");
        assert!(unpack::<de::value::Error>(&blob).is_err());
        blob.extend_from_slice(b"ef");
        assert!(unpack::<de::value::Error>(&blob).is_err());
        blob.pop();
        assert!(unpack::<de::value::Error>(&blob).is_ok());
    }
}
