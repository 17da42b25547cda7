//! What the pool and its workers say to each other over a worker's
//! [`Connection`](crate::Connection).

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::Fd;
use crate::PanicReport;

/// Most handles in one message either way: a worker's chunks, or a
/// chunk's outcomes (the wire allows 252).
pub(crate) const FDS_PER_MESSAGE: usize = 200;

/// Encoded bytes that go on the wire as one byte string, not element by
/// element. Most of a pool's values (a number, a short string) are small:
/// up to [`INLINE`] bytes are held in place, so that a task and its
/// result cost no allocation of their own.
#[derive(Clone)]
pub(crate) enum Bytes {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Vec<u8>),
}

/// The most bytes a [`Bytes`] holds without an allocation.
pub(crate) const INLINE: usize = 30;

impl Bytes {
    pub(crate) fn from_slice(v: &[u8]) -> Bytes {
        if v.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..v.len()].copy_from_slice(v);
            Bytes::Inline {
                len: v.len() as u8,
                buf,
            }
        } else {
            Bytes::Heap(v.to_vec())
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..usize::from(*len)],
            Bytes::Heap(v) => v,
        }
    }
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes::from_slice(&[])
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({:?})", self.as_slice())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.as_slice())
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        struct BytesVisitor;
        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::Heap(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Bytes::Heap(out))
            }
        }
        // `bytes`, not `byte_buf`: the codec then lends the bytes, which are
        // copied once (a `byte_buf` is a zeroed buffer filled, then moved).
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// One encoded value (a call's arguments, or a result) and the descriptors
/// of the handles inside it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Item {
    pub(crate) bytes: Bytes,
    pub(crate) fds: Vec<Fd>,
}

/// A chunk of calls of one entry: the unit a worker runs and answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Chunk {
    /// Unique in the pool; the answer repeats it.
    pub(crate) id: u64,
    pub(crate) entry: String,
    #[serde(with = "super::packed::items")]
    pub(crate) items: Vec<Item>,
}

/// Shares a value between the pool's bookkeeping and the message that
/// carries it (serialized as the value itself).
#[derive(Debug)]
pub(crate) struct Shared<T>(pub(crate) Arc<T>);

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Shared<T>, D::Error> {
        T::deserialize(deserializer).map(|v| Shared(Arc::new(v)))
    }
}

/// Why a task could not run (its entry's own failure is a panic).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum FailKind {
    Decode,
    Encode,
    UnknownEntry,
    Other,
}

/// What one call produced.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Value(Item),
    Panicked(PanicReport),
    Failed { kind: FailKind, message: String },
}

/// What a worker is started with, besides its connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Boot {
    /// The initializer: entry name and encoded arguments.
    pub(crate) init: Option<(String, Item)>,
    /// Chunks to run before exiting; 0 for no limit.
    pub(crate) max_tasks: u64,
}

/// Who a worker on another machine is (its first message).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The node's host name.
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// The cluster's name for the task (`SLURM_PROCID`), if any.
    pub(crate) rank: Option<u64>,
    /// The job and step it runs in (`SLURM_JOB_ID`, `SLURM_STEP_ID`).
    pub(crate) job: Option<String>,
    pub(crate) step: Option<String>,
}

impl Hello {
    /// Whether both name the same process: same host, pid and task. (Two
    /// tasks of one step differ in their task number even where their
    /// pids may not, in pid namespaces of their own.)
    pub(crate) fn same_worker(&self, other: &Hello) -> bool {
        self.host == other.host && self.pid == other.pid && self.rank == other.rank
    }
}

/// A message on a worker's connection, either way.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// Pool → worker: run these chunks, in order.
    Run(Vec<Shared<Chunk>>),
    /// Pool → worker: finish what you hold, then exit.
    Stop,
    /// Worker → pool: the initializer ran; tasks are welcome.
    Ready,
    /// Worker → pool: the initializer failed; the worker exits.
    InitFailed(Outcome),
    /// Worker → pool: the outcomes of the next items of one chunk, in
    /// item order. A chunk whose results hold many handles is answered in
    /// several of these, each within [`FDS_PER_MESSAGE`] (or one outcome);
    /// it is answered once all its items are.
    Done {
        id: u64,
        #[serde(with = "super::packed::outcomes")]
        outcomes: Vec<Outcome>,
    },
    /// Remote worker → pool, first: who it is.
    Hello(Hello),
    /// Pool → remote worker, once launched: what a local worker gets as
    /// its entry's argument.
    Boot(Boot),
}

impl Outcome {
    /// How many handles it holds.
    pub(crate) fn fds(&self) -> usize {
        match self {
            Outcome::Value(item) => item.fds.len(),
            _ => 0,
        }
    }
}

impl Item {
    /// A copy with its own descriptors (each `dup`ed).
    pub(crate) fn try_clone(&self) -> Result<Item, crate::Error> {
        let fds = self
            .fds
            .iter()
            .map(Fd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(crate::Error::from)?;
        Ok(Item {
            bytes: self.bytes.clone(),
            fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;

    #[test]
    fn bytes_round_trip_held_in_place_or_not() {
        for len in [0, 1, INLINE - 1, INLINE, INLINE + 1, 1000] {
            let v: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = Bytes::from_slice(&v);
            assert_eq!(matches!(b, Bytes::Inline { .. }), len <= INLINE);
            let mut buf = Vec::new();
            codec::encode_into(&b, &mut buf).unwrap();
            let back: Bytes = codec::decode(&buf).unwrap();
            assert_eq!(back.as_slice(), &v[..]);
            // The same bytes as a `Vec<u8>` sent as a byte string.
            let mut plain = Vec::new();
            codec::encode_into(&serde_bytes_like(&v), &mut plain).unwrap();
            assert_eq!(buf, plain);
        }
    }

    /// A byte string as serde's `serialize_bytes` writes it.
    fn serde_bytes_like(v: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(v)
    }
}
