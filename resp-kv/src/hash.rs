//! Hashes: HSET, HMSET, HGET, HDEL, HLEN, HEXISTS, HGETALL. Fields are kept
//! in order, so HGETALL lists them sorted.

use crate::command::{count_or_error, store_error, Args};
use crate::reply;
use crate::store::{Store, ELEMENT_OVERHEAD};
use alloc::collections::btree_map::Entry;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::mem::{replace, take};

#[derive(Debug, Default)]
pub(crate) struct Hash {
    fields: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Accounted bytes: [`field_cost`] of every field.
    cost: usize,
}

fn field_cost(field: &[u8], value: &[u8]) -> usize {
    ELEMENT_OVERHEAD + field.len() + value.len()
}

impl Hash {
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }

    pub(crate) fn is_void(&self) -> bool {
        self.fields.is_empty()
    }

    /// Sets a field; true if it is new.
    fn insert(&mut self, field: Vec<u8>, value: Vec<u8>) -> bool {
        match self.fields.entry(field) {
            Entry::Vacant(slot) => {
                self.cost += field_cost(slot.key(), &value);
                slot.insert(value);
                true
            }
            Entry::Occupied(mut slot) => {
                let added = value.len();
                let old = replace(slot.get_mut(), value);
                self.cost = self.cost - old.len() + added;
                false
            }
        }
    }

    fn remove(&mut self, field: &[u8]) -> bool {
        match self.fields.remove_entry(field) {
            Some((field, value)) => {
                self.cost -= field_cost(&field, &value);
                true
            }
            None => false,
        }
    }
}

pub(crate) fn hset(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    if let Some(added) = set_fields(store, args, "hset", out) {
        reply::count(out, added);
    }
}

/// HMSET: HSET answering `+OK`.
pub(crate) fn hmset(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    if set_fields(store, args, "hmset", out).is_some() {
        reply::ok(out);
    }
}

/// HSET key field value [field value ...]: the number of new fields, or
/// `None` once an error has been written.
fn set_fields(store: &mut Store, mut args: Args, name: &str, out: &mut Vec<u8>) -> Option<usize> {
    // The name, the key, then pairs.
    if !args.len().is_multiple_of(2) {
        reply::arity_error(out, name);
        return None;
    }
    let pairs = args.split_off(2);
    let added = store.write(take(&mut args[1]), true, |hash: &mut Hash| {
        let mut pairs = pairs.into_iter();
        let mut added = 0;
        while let (Some(field), Some(value)) = (pairs.next(), pairs.next()) {
            added += usize::from(hash.insert(field, value));
        }
        added
    });
    match added {
        Ok(added) => Some(added.unwrap_or(0)),
        Err(error) => {
            store_error(out, error);
            None
        }
    }
}

pub(crate) fn hget(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Hash>(&args[1]) {
        Ok(hash) => match hash.and_then(|hash| hash.fields.get(&args[2])) {
            Some(value) => reply::bulk(out, value),
            None => reply::null(out),
        },
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn hdel(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let removed = store.write(take(&mut args[1]), false, |hash: &mut Hash| {
        args[2..].iter().filter(|field| hash.remove(field)).count()
    });
    count_or_error(out, removed);
}

pub(crate) fn hlen(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Hash>(&args[1]) {
        Ok(hash) => reply::count(out, hash.map_or(0, |hash| hash.fields.len())),
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn hexists(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Hash>(&args[1]) {
        Ok(hash) => {
            let found = hash.is_some_and(|hash| hash.fields.contains_key(&args[2]));
            reply::count(out, usize::from(found));
        }
        Err(error) => store_error(out, error),
    }
}

/// HGETALL: the flat array field, value, field, value...
pub(crate) fn hgetall(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Hash>(&args[1]) {
        Ok(None) => reply::array(out, 0),
        Ok(Some(hash)) => {
            reply::array(out, hash.fields.len() * 2);
            for (field, value) in &hash.fields {
                reply::bulk(out, field);
                reply::bulk(out, value);
            }
        }
        Err(error) => store_error(out, error),
    }
}
