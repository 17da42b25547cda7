//! Entries: functions a child process can run, found by name.

use std::any::TypeId;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};

/// A function that can run in a child process.
///
/// Implemented by `#[process_entry]` for a marker type named like the
/// function; name that value with [`entry!`](crate::entry). Do not implement
/// it by hand.
pub trait Entry: Copy + Send + Sync + 'static {
    /// The arguments, as a tuple in declaration order.
    type Args: Serialize + DeserializeOwned + 'static;
    /// The return type.
    type Output: Serialize + DeserializeOwned + 'static;
    /// The full path of the function, as `module_path!()::name`.
    const NAME: &'static str;
    /// Calls the function.
    fn call(args: Self::Args) -> Self::Output;
}

/// Implemented by `#[process_entry]` for an entry's marker type: what
/// [`spawn!`](crate::spawn) and [`entry!`](crate::entry) look up by the fn's
/// name, to report a fn without the attribute in these words. Not public
/// API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`spawn!` and `entry!` take a fn marked `#[process_entry]`",
    label = "not marked `#[process_entry]`",
    note = "add `#[process_entry]` above this fn (it stays callable as a normal fn)"
)]
pub trait MarkedEntry {
    /// The marker type itself. An associated type, not `Self`, so that
    /// where the bound fails `ENTRY`'s type is unknown too, and rustc
    /// reports the one missing impl rather than each later use of the value.
    type Entry;
    /// The marker value.
    const ENTRY: Self::Entry;
}

/// What an entry's argument and result types need: checked by
/// `#[process_entry]` one type at a time, so that rustc's error names the
/// type at fault, at that type, with a hint for the usual case. Not public
/// API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel between processes: an entry's arguments and result \
               need Serialize + Deserialize",
    label = "not Serialize + Deserialize",
    note = "for an open file, socket or pipe, pass a `multiproc::Fd`; for a channel, a lock \
            or shared memory, use multiproc's `Queue`, `Pipe`, `Lock`, `Value` or `Array`, \
            whose handles travel",
    note = "for your own type, add `#[derive(serde::Serialize, serde::Deserialize)]`"
)]
pub trait Travel: Serialize + DeserializeOwned + 'static {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + 'static> Travel for T {}

/// Compiles only if `T` can be an entry's argument or result. Not public
/// API: called by the code `#[process_entry]` generates.
#[doc(hidden)]
pub const fn travels<T: Travel>() {}

/// What running an entry in the child produced, ready to send.
pub(crate) enum RunOutcome {
    /// The return value, encoded into the frame the caller passed.
    Value,
    /// The entry panicked: the payload's message, when it is a string.
    /// (The panic hook's report says more, but a hook the entry installed
    /// in place of multiproc's, or an unwind resumed without any hook,
    /// leaves only this.)
    Panicked(Option<String>),
    /// The child could not run the entry.
    Failed(Error),
}

/// One registered entry. Built by `#[process_entry]`; not public API.
#[doc(hidden)]
#[derive(Debug)]
pub struct EntryRecord {
    name: &'static str,
    file: &'static str,
    line: u32,
    column: u32,
    /// Tells entries that share a name apart in the parent (see [`key_of`]).
    type_id: fn() -> TypeId,
    run: RunFn,
    _anchor: super::child::Anchor,
}

impl EntryRecord {
    /// Describes entry `E`, defined at `file:line:column`.
    pub const fn new<E: Entry>(file: &'static str, line: u32, column: u32) -> EntryRecord {
        EntryRecord {
            name: E::NAME,
            file,
            line,
            column,
            type_id: TypeId::of::<E>,
            run: run_entry::<E>,
            _anchor: super::child::ANCHOR,
        }
    }

    pub(crate) fn run(&self) -> RunFn {
        self.run
    }

    /// The entry's name (`module_path!()::name`).
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }
}

/// Every entry whose load-time constructor has run, in the order they ran.
///
/// Entries register themselves from their own constructors (see
/// `__entry_ctor` below) rather than through `inventory`: a child must know
/// the moment the last entry has registered, and only its own constructors
/// can tell it.
static LOADED: Mutex<Vec<&'static EntryRecord>> = Mutex::new(Vec::new());

fn loaded() -> std::sync::MutexGuard<'static, Vec<&'static EntryRecord>> {
    LOADED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds `record` to the entries registered so far; returns how many there
/// now are.
pub(crate) fn register(record: &'static EntryRecord) -> usize {
    let mut loaded = loaded();
    loaded.push(record);
    loaded.len()
}

/// The entries registered so far (all of them, once `main` runs).
pub(crate) fn loaded_count() -> usize {
    loaded().len()
}

/// Finds the entry that `key` names (see [`lookup`]) among the entries
/// registered so far, without the registry (which must not be built before
/// every entry has registered).
pub(crate) fn find_loaded(key: &str) -> Option<&'static EntryRecord> {
    loaded().iter().copied().find(|r| r.answers_to(key))
}

/// Runs an entry from its encoded arguments (in the child).
/// The result is encoded into the frame passed (cleared first), so a
/// pool worker reuses one frame for all its tasks.
pub(crate) type RunFn = fn(&[u8], Vec<OwnedFd>, &mut crate::wire::OutFrame) -> RunOutcome;

thread_local! {
    /// Set by [`run_copy`] for the one run it makes.
    static ARGS_ARE_A_COPY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `run` on arguments that are one of several copies of one encoding
/// (see `wire::decode_copy`): a pool initializer's, which every worker gets.
pub(crate) fn run_copy(
    run: RunFn,
    args: &[u8],
    fds: Vec<OwnedFd>,
    frame: &mut crate::wire::OutFrame,
) -> RunOutcome {
    ARGS_ARE_A_COPY.set(true);
    let outcome = run(args, fds, frame);
    ARGS_ARE_A_COPY.set(false);
    outcome
}

fn run_entry<E: Entry>(
    args: &[u8],
    fds: Vec<OwnedFd>,
    frame: &mut crate::wire::OutFrame,
) -> RunOutcome {
    // Decoding the arguments and encoding the result run user code too
    // (their serde impls), so a panic there is the entry's panic.
    let copy = ARGS_ARE_A_COPY.replace(false);
    let run = || {
        let decoded = if copy {
            crate::wire::decode_copy(args, fds)
        } else {
            crate::wire::decode(args, fds)
        };
        let args: E::Args = match decoded {
            Ok(args) => args,
            Err(err) => {
                return RunOutcome::Failed(
                    Error::new(
                        ErrorKind::Decode,
                        format!("could not decode the arguments of entry `{}`", E::NAME),
                    )
                    .with_source(err),
                );
            }
        };
        let value = E::call(args);
        frame.clear();
        match frame.encode(&value) {
            Ok(()) => RunOutcome::Value,
            Err(err) => RunOutcome::Failed(err),
        }
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        let message = match payload.downcast::<String>() {
            Ok(message) => Some(*message),
            Err(payload) => payload.downcast_ref::<&str>().map(|s| s.to_string()),
        };
        RunOutcome::Panicked(message)
    })
}

/// The entries, by the key a parent sends its child.
///
/// An entry's key is its name, except where several entries share a name:
/// local fns with one name in one module (`fn inner` inside two functions),
/// whose `module_path!()` is the same. Each of those is keyed by its name
/// and its place, `name@line:column`, which the child, being the same
/// binary, resolves the same way ([`find_loaded`]). Whatever starts an
/// entry by its type ([`key_of`]: `Process`, `spawn!`, a Pool, a Manager's
/// `update_with`) finds the right one; a lookup by the name alone cannot,
/// and says so.
struct Registry {
    by_key: HashMap<&'static str, &'static EntryRecord>,
    /// Names shared by several entries, with those entries.
    duplicates: HashMap<&'static str, Vec<&'static EntryRecord>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let loaded = loaded();
        let mut by_name: HashMap<&'static str, Vec<&'static EntryRecord>> = HashMap::new();
        for record in loaded.iter().copied() {
            by_name.entry(record.name).or_default().push(record);
        }
        let mut by_key = HashMap::new();
        let mut duplicates = HashMap::new();
        for (name, records) in by_name {
            if let [record] = records[..] {
                by_key.insert(name, record);
                continue;
            }
            // Two expansions of one macro can share a place too: such
            // entries get no key, and starting them says why.
            for record in &records {
                let key = record.site_key();
                if records.iter().filter(|r| r.site_key() == key).count() == 1 {
                    // Built once per process; lives as long as the registry.
                    by_key.insert(&*Box::leak(key.into_boxed_str()), *record);
                }
            }
            duplicates.insert(name, records);
        }
        Registry { by_key, duplicates }
    })
}

impl EntryRecord {
    /// `name@line:column`: the key of an entry whose name is shared.
    fn site_key(&self) -> String {
        format!("{}@{}:{}", self.name, self.line, self.column)
    }

    /// Whether `key` names this entry: its name, or its name and place.
    fn answers_to(&self, key: &str) -> bool {
        match key.strip_prefix(self.name) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('@')
                .and_then(|site| site.split_once(':'))
                .is_some_and(|(line, column)| {
                    line.parse() == Ok(self.line) && column.parse() == Ok(self.column)
                }),
            None => false,
        }
    }
}

fn duplicate_message(name: &str, records: &[&EntryRecord]) -> String {
    let places: Vec<String> = records
        .iter()
        .map(|r| format!("{}:{}:{}", r.file, r.line, r.column))
        .collect();
    format!(
        "{} entries are registered under the name `{name}` (at {}): started by their \
         type (`spawn!`, `entry!`), each runs, but the name alone cannot tell them apart; \
         rename all but one",
        records.len(),
        places.join(" and ")
    )
}

/// Finds the entry registered under `key`: a name, or for one of several
/// entries that share a name, `name@line:column`.
pub(crate) fn lookup(key: &str) -> Result<&'static EntryRecord, Error> {
    let registry = registry();
    if let Some(records) = registry.duplicates.get(key) {
        return Err(Error::new(
            ErrorKind::DuplicateEntry,
            duplicate_message(key, records),
        ));
    }
    registry.by_key.get(key).copied().ok_or_else(|| {
        Error::new(
            ErrorKind::UnknownEntry,
            format!("no #[process_entry] named `{key}` in this binary"),
        )
    })
}

/// The key that names entry `E` to a child: its name, or if other entries
/// share that name, its name and place (see [`Registry`]).
pub(crate) fn key_of<E: Entry>() -> Result<&'static str, Error> {
    let registry = registry();
    let ours = TypeId::of::<E>();
    let is_ours = |record: &&EntryRecord| (record.type_id)() == ours;
    if registry.by_key.get(E::NAME).is_some_and(is_ours) {
        return Ok(E::NAME);
    }
    if let Some((key, _)) = registry.by_key.iter().find(|(_, record)| is_ours(record)) {
        return Ok(key);
    }
    // Not registered, or sharing its name and place with another entry.
    lookup(E::NAME).map(|record| record.name)
}

/// The names of all entries registered in this binary, sorted.
///
/// The [`Entries`] it returns is an iterator over the names, and also
/// derefs to the slice of the names not yet iterated, so both the iterator
/// methods and the slice methods work:
///
/// ```
/// #[multiproc::process_entry]
/// fn double(x: u64) -> u64 { x * 2 }
///
/// assert!(multiproc::entries().any(|name| name.ends_with("::double")));
/// assert!(multiproc::entries().iter().any(|name| name.ends_with("::double")));
/// let names: Vec<&str> = multiproc::entries().collect();
/// assert_eq!(names.len(), multiproc::entries().len());
/// ```
pub fn entries() -> Entries {
    let registry = registry();
    // Entries that share their name and place have no key: count them too.
    let mut names: Vec<&'static str> = registry
        .by_key
        .values()
        .map(|r| r.name)
        .chain(registry.duplicates.keys().copied())
        .collect();
    names.sort_unstable();
    names.dedup();
    Entries {
        names: names.into_iter(),
    }
}

/// The registered entries' names, sorted, as [`entries`] returns them: an
/// iterator that also derefs to the slice of the names it has yet to yield
/// (`.iter()`, `.contains(&name)`, `.len()`, indexing).
#[derive(Debug, Clone)]
pub struct Entries {
    names: std::vec::IntoIter<&'static str>,
}

impl Entries {
    /// Whether no name is left to yield. (Inherent, so that
    /// `entries().is_empty()` is this, not `ExactSizeIterator`'s unstable
    /// method of the same name, which the slice's would collide with.)
    pub fn is_empty(&self) -> bool {
        self.names.as_slice().is_empty()
    }
}

impl Iterator for Entries {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        self.names.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.names.size_hint()
    }
}

impl DoubleEndedIterator for Entries {
    fn next_back(&mut self) -> Option<&'static str> {
        self.names.next_back()
    }
}

impl ExactSizeIterator for Entries {}

impl std::iter::FusedIterator for Entries {}

impl std::ops::Deref for Entries {
    type Target = [&'static str];

    fn deref(&self) -> &[&'static str] {
        self.names.as_slice()
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = &'a &'static str;
    type IntoIter = std::slice::Iter<'a, &'static str>;

    fn into_iter(self) -> Self::IntoIter {
        self.names.as_slice().iter()
    }
}

impl From<Entries> for Vec<&'static str> {
    fn from(entries: Entries) -> Vec<&'static str> {
        entries.names.collect()
    }
}

/// What an entry's load-time constructor registers it with: its type and
/// where it is defined. Not public API: used by `#[process_entry]`.
///
/// The constructor calls `(&&probe).__multiproc_register()`. When the marker
/// implements [`Entry`], that is [`RegisterEntry`]'s method, which registers
/// it. When it does not, because an argument or result type cannot travel
/// (the bounds of its `Entry` impl fail, and `#[process_entry]` reported it
/// at that type), method lookup falls back to [`RegisterNothing`], so the
/// constructor adds no second error of its own.
#[doc(hidden)]
#[derive(Debug)]
pub struct Probe<E> {
    file: &'static str,
    line: u32,
    column: u32,
    _entry: std::marker::PhantomData<fn() -> E>,
}

impl<E> Probe<E> {
    /// The probe for marker `E`, defined at `file:line:column`.
    pub const fn new(file: &'static str, line: u32, column: u32) -> Probe<E> {
        Probe {
            file,
            line,
            column,
            _entry: std::marker::PhantomData,
        }
    }
}

/// Registers an entry (see [`Probe`]). Not public API.
#[doc(hidden)]
pub trait RegisterEntry {
    /// Adds the entry to this process's registry.
    fn __multiproc_register(&self);
}

impl<E: Entry> RegisterEntry for &Probe<E> {
    fn __multiproc_register(&self) {
        // Built once per process, at load time; lives as long as the program.
        let record: &'static EntryRecord = Box::leak(Box::new(EntryRecord::new::<E>(
            self.file,
            self.line,
            self.column,
        )));
        super::child::entry_loaded(record);
    }
}

/// The fallback of [`RegisterEntry`] for a marker that is not an [`Entry`]
/// (a program that does not compile). Not public API.
#[doc(hidden)]
pub trait RegisterNothing {
    /// Does nothing.
    fn __multiproc_register(&self);
}

impl<E> RegisterNothing for Probe<E> {
    fn __multiproc_register(&self) {}
}

/// Registers an entry from its own load-time constructor. Not public API:
/// used by `#[process_entry]`.
///
/// With one constructor per entry that registers it and then checks whether
/// this is a child whose entries are now all known, a child finds its entry
/// however the linker ordered the constructors (which it does not promise).
#[doc(hidden)]
#[macro_export]
macro_rules! __entry_ctor {
    ($entry:ty, $file:expr, $line:expr, $column:expr) => {
        const _: () = {
            $crate::__private::load_time_ctor!(
                __MULTIPROC_ENTRY_CTOR => $crate::__entry_ctor!(@register $entry, $file, $line, $column)
            );
        };
    };
    // An entry of multiproc itself (its own tests, the Pool's worker, the
    // Manager's server), where `unsafe_code` is denied outside `sys/`.
    (@crate $entry:ty, $file:expr, $line:expr, $column:expr) => {
        const _: () = {
            $crate::__private::load_time_ctor!(
                @crate __MULTIPROC_ENTRY_CTOR => $crate::__entry_ctor!(@register $entry, $file, $line, $column)
            );
        };
    };
    (@register $entry:ty, $file:expr, $line:expr, $column:expr) => {{
        #[allow(unused_imports)]
        use $crate::__private::{RegisterEntry as _, RegisterNothing as _};
        (&&$crate::__private::Probe::<$entry>::new($file, $line, $column)).__multiproc_register()
    }};
}

#[cfg(test)]
mod tests {
    use super::{Entry, EntryRecord};

    #[crate::process_entry]
    fn keyed() {}

    #[test]
    fn a_key_names_an_entry_by_its_name_or_its_name_and_place() {
        let record = EntryRecord::new::<keyed>("here.rs", 12, 5);
        let name = <keyed as Entry>::NAME;
        assert!(name.ends_with("::keyed"));
        assert!(record.answers_to(name));
        assert!(record.answers_to(&format!("{name}@12:5")));
        assert_eq!(record.site_key(), format!("{name}@12:5"));
        for other in [
            "@12:6", "@13:5", "@12", "@12:5:1", "@x:5", "@", "d", "@12:5 ",
        ] {
            assert!(!record.answers_to(&format!("{name}{other}")), "{other}");
        }
        assert!(!record.answers_to(&name[..name.len() - 1]));
    }
}
