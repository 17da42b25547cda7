//! Typed proxies of the manager's data objects: they encode and decode on
//! this side; the server only ever sees bytes.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::client::{Handle, Uses};
use super::internals::{decode, encode_into};
use super::proto::{Fields, Frame, Op};
use crate::error::{Error, ErrorKind};
use crate::spawn::registry::Entry;

fn put<T: Serialize + ?Sized>(frame: &mut Frame, value: &T) -> Result<(), Error> {
    frame.bytes_with(|buf| encode_into(value, buf)).map(drop)
}

fn get_opt<T: DeserializeOwned>(f: &mut Fields<'_>) -> Result<Option<T>, Error> {
    f.opt()?.map(decode).transpose()
}

fn get_vec<T: DeserializeOwned>(f: &mut Fields<'_>) -> Result<Vec<T>, Error> {
    let n = f.count(8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(decode(f.bytes()?)?);
    }
    Ok(out)
}

macro_rules! proxy_common {
    ($name:ident < $($t:ident),* >, $what:literal) => {
        impl<$($t),*> Clone for $name<$($t),*> {
            fn clone(&self) -> Self {
                $name { h: self.h.clone(), _t: PhantomData }
            }
        }

        impl<$($t),*> fmt::Debug for $name<$($t),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, " proxy ({:?})"), self.h)
            }
        }

        impl<$($t),*> Serialize for $name<$($t),*> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.h.serialize(s)
            }
        }

        impl<'de, $($t),*> Deserialize<'de> for $name<$($t),*> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($name { h: Handle::deserialize(d)?, _t: PhantomData })
            }
        }

        impl<$($t),*> $name<$($t),*> {
            pub(crate) fn from_handle(h: Handle) -> Self {
                $name { h, _t: PhantomData }
            }
        }
    };
}

/// A dictionary held by a [`Manager`](crate::Manager): Python's
/// `manager.dict()`. Made by [`Manager::dict`](crate::Manager::dict).
///
/// Keys and values are encoded on this side; the server compares keys by
/// their encoded bytes (so `0.0` and `-0.0` are different keys, and a key
/// type must encode equal values to equal bytes — a `HashMap` inside a key
/// does not). Every method is one request, atomic on the server. Keys
/// keep the order they were first inserted in, as in a Python `dict`.
///
/// `get`, `remove` and `contains_key` take any form the key borrows as,
/// which is found only if it encodes as the key does: `&str` for a
/// `String`, `&[T]` for a `Vec<T>`, `&Path` for a `PathBuf` do. **An array
/// key `[T; N]` looked up by a slice `&[T]` does not**: an array encodes
/// without its length, a slice with it, so the key is not found (`None`,
/// `false`), where a `HashMap` would find it. Look it up by the array.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let manager = multiproc::Manager::start()?;
/// let d = manager.dict::<String, i64>()?;
/// d.insert("b".into(), 1)?;
/// d.insert("a".into(), 2)?;
/// assert_eq!(d.get("a")?, Some(2));
/// assert_eq!(d.len()?, 2);
/// assert_eq!(d.keys()?, ["b", "a"]);
/// # Ok(())
/// # }
/// ```
pub struct DictProxy<K, V> {
    h: Handle,
    _t: PhantomData<fn() -> (K, V)>,
}

proxy_common!(DictProxy<K, V>, "dict");

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> DictProxy<K, V> {
    /// The value under `key`, if any.
    ///
    /// `key` may be any form of the key type `K` borrows as (`&str` for a
    /// `String` key, as with a `HashMap`); it must encode as the key does.
    /// See [`DictProxy`]'s caveat: an array key is not found by a slice.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.h.client.call_as(
            Uses::PROBING,
            Op::MapGet,
            self.h.id,
            |f| put(f, key),
            get_opt,
        )
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&self, key: K, value: V) -> Result<Option<V>, Error> {
        self.h.client.call_as(
            Uses::TAKING,
            Op::MapInsert,
            self.h.id,
            |f| {
                put(f, &key)?;
                put(f, &value)
            },
            get_opt,
        )
    }

    /// Removes `key`; returns its value.
    ///
    /// `key` may be any form of the key type `K` borrows as (`&str` for a
    /// `String` key, as with a `HashMap`); it must encode as the key does.
    /// See [`DictProxy`]'s caveat: an array key is not found by a slice.
    pub fn remove<Q>(&self, key: &Q) -> Result<Option<V>, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.h.client.call_as(
            Uses::PROBING_TAKING,
            Op::MapRemove,
            self.h.id,
            |f| put(f, key),
            get_opt,
        )
    }

    /// The value under `key`, inserting `default` there first if the key
    /// is absent, in one atomic step (Python's `setdefault`): of several
    /// processes racing to insert, one wins and all get its value.
    #[doc(alias = "setdefault")]
    pub fn get_or_insert(&self, key: K, default: V) -> Result<V, Error> {
        self.h.client.call(
            Op::MapSetDefault,
            self.h.id,
            |f| {
                put(f, &key)?;
                put(f, &default)
            },
            |f| decode(f.bytes()?),
        )
    }

    /// Removes and returns the entry inserted last (Python's `popitem`);
    /// `None` if the dictionary is empty.
    #[doc(alias = "popitem")]
    pub fn pop_last(&self) -> Result<Option<(K, V)>, Error> {
        self.h.client.call_as(
            Uses::TAKING,
            Op::MapPopItem,
            self.h.id,
            |_| Ok(()),
            |f| {
                if !f.bool()? {
                    return Ok(None);
                }
                Ok(Some((decode(f.bytes()?)?, decode(f.bytes()?)?)))
            },
        )
    }

    /// Whether `key` is present.
    ///
    /// `key` may be any form of the key type `K` borrows as (`&str` for a
    /// `String` key, as with a `HashMap`); it must encode as the key does.
    /// See [`DictProxy`]'s caveat: an array key is not found by a slice.
    pub fn contains_key<Q>(&self, key: &Q) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.h.client.call_as(
            Uses::PROBING,
            Op::MapContains,
            self.h.id,
            |f| put(f, key),
            |f| f.bool(),
        )
    }

    /// The number of entries.
    pub fn len(&self) -> Result<usize, Error> {
        self.h
            .client
            .call(Op::MapLen, self.h.id, |_| Ok(()), |f| Ok(f.u64()? as usize))
    }

    /// Whether the dictionary is empty.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Every key, in the order the keys were first inserted (as a Python
    /// `dict` keeps them: replacing a value keeps its key's place; a key
    /// removed and inserted again goes last).
    pub fn keys(&self) -> Result<Vec<K>, Error> {
        self.h
            .client
            .call(Op::MapKeys, self.h.id, |_| Ok(()), get_vec)
    }

    /// Every value, in the order of their keys (see [`keys`](Self::keys)).
    pub fn values(&self) -> Result<Vec<V>, Error> {
        self.h
            .client
            .call(Op::MapValues, self.h.id, |_| Ok(()), get_vec)
    }

    /// Every entry, in the order of their keys (see [`keys`](Self::keys)),
    /// read in one request.
    pub fn items(&self) -> Result<Vec<(K, V)>, Error> {
        self.h.client.call(
            Op::MapItems,
            self.h.id,
            |_| Ok(()),
            |f| {
                let n = f.count(16)?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push((decode(f.bytes()?)?, decode(f.bytes()?)?));
                }
                Ok(out)
            },
        )
    }

    /// Inserts every pair, in one request.
    pub fn update(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<(), Error> {
        self.h.client.call(
            Op::MapUpdate,
            self.h.id,
            |f| {
                let at = f.buf.len();
                f.u64(0);
                let mut n = 0u64;
                for (k, v) in items {
                    put(f, &k)?;
                    put(f, &v)?;
                    n += 1;
                }
                f.buf[at..at + 8].copy_from_slice(&n.to_le_bytes());
                Ok(())
            },
            |_| Ok(()),
        )
    }

    /// Removes every entry.
    pub fn clear(&self) -> Result<(), Error> {
        self.h
            .client
            .call(Op::MapClear, self.h.id, |_| Ok(()), |_| Ok(()))
    }

    /// A copy of the whole dictionary, read in one request.
    pub fn snapshot(&self) -> Result<HashMap<K, V>, Error>
    where
        K: Eq + Hash,
    {
        Ok(self.items()?.into_iter().collect())
    }

    /// Replaces the value under `key` with `f(old)` in one atomic step on
    /// the server, and returns the new value. `f` is an entry
    /// (`#[process_entry] fn f(old: Option<V>) -> V`), so it runs in the
    /// server process. While it runs, other requests on this dictionary
    /// wait for it (each still ends if its client goes away); requests on
    /// the manager's other objects are served meanwhile. So `f` must not
    /// use this same dictionary (through a proxy of it): that request
    /// would wait for `f`, and `f` for it, and the dictionary would stay
    /// stuck for every client. The rest of the manager is unaffected.
    ///
    /// ```
    /// #[multiproc::process_entry]
    /// fn add_one(old: Option<u64>) -> u64 {
    ///     old.unwrap_or(0) + 1
    /// }
    ///
    /// # fn main() -> multiproc::Result<()> {
    /// let manager = multiproc::Manager::start()?;
    /// let counts = manager.dict::<String, u64>()?;
    /// assert_eq!(counts.update_with("hits".into(), multiproc::entry!(add_one))?, 1);
    /// assert_eq!(counts.update_with("hits".into(), multiproc::entry!(add_one))?, 2);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::UnknownEntry`] if the
    /// server's binary has no such entry (a remote server may be another
    /// program); [`ErrorKind::Panicked`] if `f`
    /// panicked (the value is then unchanged).
    pub fn update_with<E>(&self, key: K, f: E) -> Result<V, Error>
    where
        E: Entry<Args = (Option<V>,), Output = V>,
    {
        let _ = f;
        self.h.client.call(
            Op::MapUpdateWith,
            self.h.id,
            |fr| {
                put(fr, &key)?;
                fr.bytes(super::internals::entry_key::<E>()?.as_bytes());
                Ok(())
            },
            |f| decode(f.bytes()?),
        )
    }
}

/// A list held by a [`Manager`](crate::Manager): Python's `manager.list()`.
/// Made by [`Manager::list`](crate::Manager::list). Every method is one
/// request, atomic on the server.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let manager = multiproc::Manager::start()?;
/// let l = manager.list::<i64>((0..3).collect())?;
/// l.push(3)?;
/// assert_eq!(l.snapshot()?, vec![0, 1, 2, 3]);
/// assert_eq!(l.pop()?, Some(3));
/// # Ok(())
/// # }
/// ```
pub struct ListProxy<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(ListProxy<T>, "list");

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    /// Appends `value` (Python's `append`).
    pub fn push(&self, value: T) -> Result<(), Error> {
        self.h
            .client
            .call(Op::SeqPush, self.h.id, |f| put(f, &value), |_| Ok(()))
    }

    /// The item at `index`, if there is one.
    pub fn get(&self, index: usize) -> Result<Option<T>, Error> {
        seq_get(&self.h, index)
    }

    /// Replaces the item at `index`.
    ///
    /// # Errors
    /// [`ErrorKind::OutOfRange`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<(), Error> {
        seq_set(&self.h, index, &value)
    }

    /// Removes and returns the last item (`None` if the list is empty).
    pub fn pop(&self) -> Result<Option<T>, Error> {
        self.h.client.call_as(
            Uses::TAKING,
            Op::SeqPop,
            self.h.id,
            |f| {
                f.u8(0);
                Ok(())
            },
            get_opt,
        )
    }

    /// Removes and returns the item at `index` (`None` past the end).
    pub fn pop_at(&self, index: usize) -> Result<Option<T>, Error> {
        self.h.client.call_as(
            Uses::TAKING,
            Op::SeqPop,
            self.h.id,
            |f| {
                f.u8(1).u64(index as u64);
                Ok(())
            },
            get_opt,
        )
    }

    /// Inserts `value` before `index` (at the end if `index` is past it).
    pub fn insert(&self, index: usize, value: T) -> Result<(), Error> {
        self.h.client.call(
            Op::SeqInsert,
            self.h.id,
            |f| {
                f.u64(index as u64);
                put(f, &value)
            },
            |_| Ok(()),
        )
    }

    /// Removes and returns the item at `index` (`None` past the end), as
    /// `Vec::remove` does; the same as [`pop_at`](Self::pop_at). To remove
    /// by value, as Python's `list.remove(x)` does, use
    /// [`remove_value`](Self::remove_value).
    pub fn remove(&self, index: usize) -> Result<Option<T>, Error> {
        self.pop_at(index)
    }

    /// Removes the first item equal to `value` (compared encoded); returns
    /// whether there was one (Python's `list.remove(x)`, which raises where
    /// this returns `false`).
    pub fn remove_value(&self, value: &T) -> Result<bool, Error> {
        self.h.client.call_as(
            Uses::PROBING,
            Op::SeqRemove,
            self.h.id,
            |f| put(f, value),
            |f| f.bool(),
        )
    }

    /// The index of the first item equal to `value` (compared encoded),
    /// if any (Python's `index`, which raises where this is `None`).
    #[doc(alias = "index")]
    pub fn position(&self, value: &T) -> Result<Option<usize>, Error> {
        self.h.client.call_as(
            Uses::PROBING,
            Op::SeqPosition,
            self.h.id,
            |f| put(f, value),
            |f| {
                if !f.bool()? {
                    return Ok(None);
                }
                Ok(Some(f.u64()? as usize))
            },
        )
    }

    /// How many items are equal to `value` (compared encoded).
    pub fn count(&self, value: &T) -> Result<usize, Error> {
        self.h.client.call_as(
            Uses::PROBING,
            Op::SeqCount,
            self.h.id,
            |f| put(f, value),
            |f| Ok(f.u64()? as usize),
        )
    }

    /// Reverses the list in place, in one atomic step.
    pub fn reverse(&self) -> Result<(), Error> {
        self.h
            .client
            .call(Op::SeqReverse, self.h.id, |_| Ok(()), |_| Ok(()))
    }

    /// The number of items.
    pub fn len(&self) -> Result<usize, Error> {
        seq_len(&self.h)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Appends every item, in one request.
    pub fn extend(&self, items: impl IntoIterator<Item = T>) -> Result<(), Error> {
        self.h.client.call(
            Op::SeqExtend,
            self.h.id,
            |f| put_items(f, items),
            |_| Ok(()),
        )
    }

    /// A copy of the whole list, read in one request.
    pub fn snapshot(&self) -> Result<Vec<T>, Error> {
        seq_snapshot(&self.h)
    }
}

fn put_items<T: Serialize>(f: &mut Frame, items: impl IntoIterator<Item = T>) -> Result<(), Error> {
    let at = f.buf.len();
    f.u64(0);
    let mut n = 0u64;
    for item in items {
        put(f, &item)?;
        n += 1;
    }
    f.buf[at..at + 8].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

fn seq_get<T: DeserializeOwned>(h: &Handle, index: usize) -> Result<Option<T>, Error> {
    h.client.call(
        Op::SeqGet,
        h.id,
        |f| {
            f.u64(index as u64);
            Ok(())
        },
        get_opt,
    )
}

fn seq_set<T: Serialize>(h: &Handle, index: usize, value: &T) -> Result<(), Error> {
    h.client.call(
        Op::SeqSet,
        h.id,
        |f| {
            f.u64(index as u64);
            put(f, value)
        },
        |_| Ok(()),
    )
}

fn seq_len(h: &Handle) -> Result<usize, Error> {
    h.client
        .call(Op::SeqLen, h.id, |_| Ok(()), |f| Ok(f.u64()? as usize))
}

fn seq_snapshot<T: DeserializeOwned>(h: &Handle) -> Result<Vec<T>, Error> {
    h.client.call(Op::SeqSnapshot, h.id, |_| Ok(()), get_vec)
}

pub(crate) fn create_items<T: Serialize>(
    f: &mut Frame,
    items: impl IntoIterator<Item = T>,
) -> Result<(), Error> {
    put_items(f, items)
}

pub(crate) fn create_value<T: Serialize>(f: &mut Frame, value: &T) -> Result<(), Error> {
    put(f, value)
}

/// A namespace held by a [`Manager`](crate::Manager): Python's
/// `manager.Namespace()`, attributes by name, each of any type.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let manager = multiproc::Manager::start()?;
/// let ns = manager.namespace()?;
/// ns.set("x", &1.5f64)?;
/// assert_eq!(ns.get::<f64>("x")?, Some(1.5));
/// assert_eq!(ns.get::<f64>("y")?, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct NamespaceProxy {
    h: Handle,
}

impl fmt::Debug for NamespaceProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "namespace proxy ({:?})", self.h)
    }
}

impl NamespaceProxy {
    pub(crate) fn from_handle(h: Handle) -> NamespaceProxy {
        NamespaceProxy { h }
    }

    /// The attribute `name`, decoded as `T` (`None` if it was never set).
    ///
    /// # Errors
    /// [`ErrorKind::Decode`] if it was set with
    /// another type.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Error> {
        self.h.client.call(
            Op::MapGet,
            self.h.id,
            |f| {
                f.bytes(name.as_bytes());
                Ok(())
            },
            |f| {
                let Some(bytes) = f.opt()? else {
                    return Ok(None);
                };
                // Attributes are of any type: name the one asked for, as
                // the codec's own words ("4 trailing bytes…") do not.
                decode(bytes).map(Some).map_err(|e| {
                    Error::new(
                        ErrorKind::Decode,
                        format!(
                            "the namespace attribute `{name}` is not a `{}` (was it set \
                             with another type?)",
                            std::any::type_name::<T>()
                        ),
                    )
                    .with_source(e)
                })
            },
        )
    }

    /// Sets the attribute `name`.
    pub fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<(), Error> {
        self.h.client.call(
            Op::MapInsert,
            self.h.id,
            |f| {
                f.bytes(name.as_bytes());
                put(f, value)
            },
            |f| f.opt().map(drop),
        )
    }

    /// Removes the attribute `name`; returns whether it was set.
    pub fn remove(&self, name: &str) -> Result<bool, Error> {
        self.h.client.call(
            Op::MapRemove,
            self.h.id,
            |f| {
                f.bytes(name.as_bytes());
                Ok(())
            },
            |f| Ok(f.opt()?.is_some()),
        )
    }
}

/// A single value held by a [`Manager`](crate::Manager): Python's
/// `manager.Value(typecode, v)`, for any serde type.
///
/// ```
/// #[multiproc::process_entry]
/// fn double(old: Option<i64>) -> i64 {
///     old.unwrap_or(0) * 2
/// }
///
/// # fn main() -> multiproc::Result<()> {
/// let manager = multiproc::Manager::start()?;
/// let v = manager.value(21i64)?;
/// assert_eq!(v.update_with(multiproc::entry!(double))?, 42);
/// assert_eq!(v.get()?, 42);
/// # Ok(())
/// # }
/// ```
pub struct ValueProxy<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(ValueProxy<T>, "value");

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// The current value.
    pub fn get(&self) -> Result<T, Error> {
        self.h
            .client
            .call(Op::ValueGet, self.h.id, |_| Ok(()), |f| decode(f.bytes()?))
    }

    /// Replaces the value; `value` may be given by value or by reference
    /// (`v.set(5)` or `v.set(&x)`).
    pub fn set(&self, value: impl Borrow<T>) -> Result<(), Error> {
        self.h.client.call(
            Op::ValueSet,
            self.h.id,
            |f| put(f, value.borrow()),
            |_| Ok(()),
        )
    }

    /// Replaces the value with `f(Some(old))` atomically on the server (see
    /// [`DictProxy::update_with`]: other requests on this value wait for
    /// `f`, and `f` must not use this value itself); returns the new value.
    pub fn update_with<E>(&self, f: E) -> Result<T, Error>
    where
        E: Entry<Args = (Option<T>,), Output = T>,
    {
        let _ = f;
        self.h.client.call(
            Op::ValueUpdateWith,
            self.h.id,
            |fr| {
                fr.bytes(super::internals::entry_key::<E>()?.as_bytes());
                Ok(())
            },
            |f| decode(f.bytes()?),
        )
    }
}

/// A fixed-length array held by a [`Manager`](crate::Manager): Python's
/// `manager.Array(typecode, seq)`, for any serde type.
///
/// ```
/// # fn main() -> multiproc::Result<()> {
/// let manager = multiproc::Manager::start()?;
/// let a = manager.array(vec![0u8; 4])?;
/// a.set(2, 7)?;
/// assert_eq!(a.snapshot()?, vec![0, 0, 7, 0]);
/// assert!(a.set(4, 1).unwrap_err().kind() == multiproc::ErrorKind::OutOfRange);
/// # Ok(())
/// # }
/// ```
pub struct ArrayProxy<T> {
    h: Handle,
    _t: PhantomData<fn() -> T>,
}

proxy_common!(ArrayProxy<T>, "array");

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    /// The item at `index` (`None` past the end).
    pub fn get(&self, index: usize) -> Result<Option<T>, Error> {
        seq_get(&self.h, index)
    }

    /// Replaces the item at `index`.
    ///
    /// # Errors
    /// [`ErrorKind::OutOfRange`] past the end.
    pub fn set(&self, index: usize, value: T) -> Result<(), Error> {
        seq_set(&self.h, index, &value)
    }

    /// The length (fixed when the array was made).
    pub fn len(&self) -> Result<usize, Error> {
        seq_len(&self.h)
    }

    /// Whether the array has no items.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// A copy of every item, read in one request.
    pub fn snapshot(&self) -> Result<Vec<T>, Error> {
        seq_snapshot(&self.h)
    }
}
