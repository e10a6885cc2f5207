//! The key space: deterministic ordered map, value types, memory accounting.

use crate::hash::Hash;
use crate::num;
use crate::set::Set;
use crate::stream::Stream;
use crate::zset::ZSet;
use alloc::collections::btree_map::Entry;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

/// Bytes charged per key on top of its key and value bytes: its share of a
/// B-tree node, the `Vec` headers and the allocator's per-block overhead.
const KEY_OVERHEAD: usize = 128;
/// Bytes charged per list element on top of its bytes: its slot in the
/// deque (with growth slack) and the allocator's per-block overhead. Set
/// members, hash fields, sorted-set members and stream entries are charged
/// in the same unit (see each type's module).
pub(crate) const ELEMENT_OVERHEAD: usize = 64;

/// Resource limits, fixed when the [`Store`] is created. They exist so that
/// hostile or careless clients get an error reply instead of exhausting a
/// heap whose allocation failure would stop the whole appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Write commands are refused with `-OOM` while the store's accounted
    /// size is above this many bytes.
    pub maxmemory: usize,
    /// Longest bulk string a request may carry, and longest string value
    /// `APPEND` may build (Redis's `proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most arguments one request may have.
    pub max_args: usize,
    /// Most bytes the arguments of one request may add up to (each argument
    /// also counts a fixed overhead for its allocation).
    pub max_request_len: usize,
    /// Longest inline request or `*`/`$` header line.
    pub max_inline_len: usize,
    /// `Connection::process` stops executing commands once the output buffer
    /// holds this many bytes, so replies can be flushed before more are made.
    pub reply_high_water: usize,
}

impl Limits {
    /// Sized for the guest appliance: a ~100 MiB heap shared by the store,
    /// up to 64 connections and their socket buffers.
    pub const DEFAULT: Limits = Limits {
        maxmemory: 32 << 20,
        max_bulk_len: 512 << 10,
        max_args: 64 << 10,
        max_request_len: 1 << 20,
        max_inline_len: 64 << 10,
        reply_high_water: 64 << 10,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// A stored value.
#[derive(Debug)]
pub(crate) enum Value {
    Str(Vec<u8>),
    List(VecDeque<Vec<u8>>),
    Set(Set),
    Hash(Hash),
    ZSet(ZSet),
    Stream(Stream),
}

impl Value {
    /// The name `TYPE` answers.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::Hash(_) => "hash",
            Value::ZSet(_) => "zset",
            Value::Stream(_) => "stream",
        }
    }
}

/// A value type that keeps its own accounted size, so that a write into a
/// large collection costs O(1) bookkeeping: [`Store::write`] charges the
/// difference of [`cost`](Collection::cost) before and after.
pub(crate) trait Collection: Default + Into<Value> {
    fn of(value: &Value) -> Option<&Self>;
    fn of_mut(value: &mut Value) -> Option<&mut Self>;
    /// Accounted bytes, not counting the key.
    fn cost(&self) -> usize;
    /// True when the key must go: Redis deletes a set, hash or sorted set
    /// once it is empty, but keeps an empty stream (and its last ID).
    fn is_void(&self) -> bool;
}

/// `impl Collection` for a type held by one `Value` variant.
macro_rules! collection {
    ($type:ident, $variant:ident) => {
        impl From<$type> for Value {
            fn from(value: $type) -> Value {
                Value::$variant(value)
            }
        }

        impl Collection for $type {
            fn of(value: &Value) -> Option<&Self> {
                match value {
                    Value::$variant(inner) => Some(inner),
                    _ => None,
                }
            }

            fn of_mut(value: &mut Value) -> Option<&mut Self> {
                match value {
                    Value::$variant(inner) => Some(inner),
                    _ => None,
                }
            }

            fn cost(&self) -> usize {
                $type::cost(self)
            }

            fn is_void(&self) -> bool {
                $type::is_void(self)
            }
        }
    };
}

collection!(Set, Set);
collection!(Hash, Hash);
collection!(ZSet, ZSet);
collection!(Stream, Stream);

/// Why a store operation was refused; each maps to one Redis error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreError {
    WrongType,
    NotInteger,
    Overflow,
    StringTooLong,
}

/// Which end of a list an operation works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Head,
    Tail,
}

/// The key-value store shared by all connections.
///
/// Keys live in a `BTreeMap` so that every operation, and the memory layout
/// it leads to, depends only on the commands applied: no hash seeds.
#[derive(Debug)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Value>,
    /// Approximate bytes held, kept up to date by every mutation.
    used: usize,
    limits: Limits,
    /// The caller's clock, in ms: what `XADD *` takes its IDs from.
    now_ms: u64,
}

impl Store {
    pub fn new(limits: Limits) -> Store {
        Store {
            map: BTreeMap::new(),
            used: 0,
            limits,
            now_ms: 0,
        }
    }

    /// Sets the clock that commands read (`XADD` with `*`), in
    /// milliseconds. The store never reads a clock itself: the same
    /// requests at the same clock values give the same replies. A clock
    /// that goes back is harmless: stream IDs still only grow.
    pub fn set_time_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.now_ms
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Approximate bytes held by keys and values.
    pub fn used_memory(&self) -> usize {
        self.used
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when write commands must be refused.
    pub(crate) fn over_limit(&self) -> bool {
        self.used > self.limits.maxmemory
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key)
    }

    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// The collection of type `T` at `key`: `None` if the key is missing,
    /// `WrongType` if it holds another type.
    pub(crate) fn read<T: Collection>(&self, key: &[u8]) -> Result<Option<&T>, StoreError> {
        match self.map.get(key) {
            None => Ok(None),
            Some(value) => T::of(value).map(Some).ok_or(StoreError::WrongType),
        }
    }

    /// Runs `change` on the collection of type `T` at `key`, creating an
    /// empty one first if the key is missing and `create` holds (`Ok(None)`
    /// without running it otherwise). Keeps the accounting up to date and
    /// deletes the key when `change` leaves the collection void (an empty
    /// collection is never stored).
    pub(crate) fn write<T: Collection, R>(
        &mut self,
        key: Vec<u8>,
        create: bool,
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<Option<R>, StoreError> {
        match self.map.entry(key) {
            Entry::Vacant(slot) => {
                if !create {
                    return Ok(None);
                }
                let mut collection = T::default();
                let result = change(&mut collection);
                if !collection.is_void() {
                    self.used += key_cost(slot.key()) + collection.cost();
                    slot.insert(collection.into());
                }
                Ok(Some(result))
            }
            Entry::Occupied(mut slot) => {
                let collection = T::of_mut(slot.get_mut()).ok_or(StoreError::WrongType)?;
                let before = collection.cost();
                let result = change(collection);
                let after = collection.cost();
                let void = collection.is_void();
                self.used = self.used - before + after;
                if void {
                    let (key, _) = slot.remove_entry();
                    self.used -= key_cost(&key) + after;
                }
                Ok(Some(result))
            }
        }
    }

    /// Stores a string, replacing any value; returns the old value.
    pub(crate) fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Option<Value> {
        let key_bytes = key_cost(&key);
        let value_bytes = value.capacity();
        let old = self.map.insert(key, Value::Str(value));
        match &old {
            // The map keeps the original key allocation: only the value changed.
            Some(old) => self.used -= value_cost(old),
            None => self.used += key_bytes,
        }
        self.used += value_bytes;
        old
    }

    /// Removes a key; true if it existed.
    pub(crate) fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove_entry(key) {
            Some((key, value)) => {
                self.used -= key_cost(&key) + value_cost(&value);
                true
            }
            None => false,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.used = 0;
    }

    /// Adds `delta` to the integer held as text at `key` (missing = 0). An
    /// existing string is rewritten in its own buffer, with one lookup.
    pub(crate) fn incr_by(&mut self, key: Vec<u8>, delta: i64) -> Result<i64, StoreError> {
        match self.map.entry(key) {
            Entry::Vacant(slot) => {
                let mut text = Vec::new();
                num::write_i64(&mut text, delta);
                self.used += key_cost(slot.key()) + text.capacity();
                slot.insert(Value::Str(text));
                Ok(delta)
            }
            Entry::Occupied(slot) => match slot.into_mut() {
                Value::Str(text) => {
                    let current = num::parse_i64(text).ok_or(StoreError::NotInteger)?;
                    let next = current.checked_add(delta).ok_or(StoreError::Overflow)?;
                    let before = text.capacity();
                    text.clear();
                    num::write_i64(text, next);
                    self.used = self.used - before + text.capacity();
                    Ok(next)
                }
                _ => Err(StoreError::WrongType),
            },
        }
    }

    /// Appends to the string at `key` (missing = empty); returns its new length.
    pub(crate) fn append(&mut self, key: Vec<u8>, suffix: Vec<u8>) -> Result<usize, StoreError> {
        match self.map.entry(key) {
            Entry::Vacant(slot) => {
                let len = suffix.len();
                self.used += key_cost(slot.key()) + suffix.capacity();
                slot.insert(Value::Str(suffix));
                Ok(len)
            }
            Entry::Occupied(slot) => match slot.into_mut() {
                Value::Str(text) => {
                    if text.len() + suffix.len() > self.limits.max_bulk_len {
                        return Err(StoreError::StringTooLong);
                    }
                    let before = text.capacity();
                    text.extend_from_slice(&suffix);
                    self.used += text.capacity() - before;
                    Ok(text.len())
                }
                _ => Err(StoreError::WrongType),
            },
        }
    }

    /// Pushes `values` one by one onto `end` of the list at `key`, creating
    /// it if missing; returns the list's new length.
    pub(crate) fn push(
        &mut self,
        key: Vec<u8>,
        values: Vec<Vec<u8>>,
        end: End,
    ) -> Result<usize, StoreError> {
        let added: usize = values.iter().map(element_cost).sum();
        match self.map.entry(key) {
            Entry::Vacant(slot) => {
                let mut list = VecDeque::from(values);
                if end == End::Head {
                    // Pushing a, b, c one by one onto the head leaves c, b, a.
                    list.make_contiguous().reverse();
                }
                let len = list.len();
                self.used += key_cost(slot.key()) + added;
                slot.insert(Value::List(list));
                Ok(len)
            }
            Entry::Occupied(slot) => match slot.into_mut() {
                Value::List(list) => {
                    match end {
                        End::Head => values.into_iter().for_each(|v| list.push_front(v)),
                        End::Tail => list.extend(values),
                    }
                    self.used += added;
                    Ok(list.len())
                }
                _ => Err(StoreError::WrongType),
            },
        }
    }

    /// Removes up to `count` elements from `end` of the list at `key`,
    /// deleting the key when the list becomes empty. `None` if the key is
    /// missing.
    pub(crate) fn pop(
        &mut self,
        key: &[u8],
        end: End,
        count: usize,
    ) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
        let list = match self.map.get_mut(key) {
            None => return Ok(None),
            Some(Value::List(list)) => list,
            Some(_) => return Err(StoreError::WrongType),
        };
        let take = count.min(list.len());
        let popped: Vec<Vec<u8>> = match end {
            End::Head => list.drain(..take).collect(),
            End::Tail => list.drain(list.len() - take..).rev().collect(),
        };
        let emptied = list.is_empty();
        self.used -= popped.iter().map(element_cost).sum::<usize>();
        if emptied {
            self.remove(key);
        }
        Ok(Some(popped))
    }
}

/// Bytes charged for a key itself.
fn key_cost(key: &[u8]) -> usize {
    KEY_OVERHEAD + key.len()
}

fn element_cost(element: &Vec<u8>) -> usize {
    ELEMENT_OVERHEAD + element.capacity()
}

/// Bytes charged for a value (not its key).
fn value_cost(value: &Value) -> usize {
    match value {
        Value::Str(text) => text.capacity(),
        Value::List(list) => list.iter().map(element_cost).sum(),
        Value::Set(set) => set.cost(),
        Value::Hash(hash) => hash.cost(),
        Value::ZSet(zset) => zset.cost(),
        Value::Stream(stream) => stream.cost(),
    }
}
