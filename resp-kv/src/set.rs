//! Sets: SADD, SREM, SCARD, SISMEMBER, SMEMBERS, SPOP.
//!
//! Members are kept in order, so SMEMBERS lists them sorted and SPOP takes
//! the smallest: Redis picks at random, which a replayed guest cannot.

use crate::command::{count_or_error, pop_count, store_error, Args};
use crate::reply;
use crate::store::{Store, ELEMENT_OVERHEAD};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::mem::take;

#[derive(Debug, Default)]
pub(crate) struct Set {
    members: BTreeSet<Vec<u8>>,
    /// Accounted bytes: [`member_cost`] of every member.
    cost: usize,
}

fn member_cost(member: &[u8]) -> usize {
    ELEMENT_OVERHEAD + member.len()
}

impl Set {
    pub(crate) fn cost(&self) -> usize {
        self.cost
    }

    pub(crate) fn is_void(&self) -> bool {
        self.members.is_empty()
    }

    fn insert(&mut self, member: Vec<u8>) -> bool {
        let cost = member_cost(&member);
        let added = self.members.insert(member);
        if added {
            self.cost += cost;
        }
        added
    }

    fn remove(&mut self, member: &[u8]) -> bool {
        let removed = self.members.remove(member);
        if removed {
            self.cost -= member_cost(member);
        }
        removed
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        let member = self.members.pop_first()?;
        self.cost -= member_cost(&member);
        Some(member)
    }
}

pub(crate) fn sadd(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let members = args.split_off(2);
    let added = store.write(take(&mut args[1]), true, |set: &mut Set| {
        members
            .into_iter()
            .map(|member| set.insert(member))
            .filter(|&added| added)
            .count()
    });
    count_or_error(out, added);
}

pub(crate) fn srem(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    let removed = store.write(take(&mut args[1]), false, |set: &mut Set| {
        args[2..].iter().filter(|member| set.remove(member)).count()
    });
    count_or_error(out, removed);
}

pub(crate) fn scard(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Set>(&args[1]) {
        Ok(set) => reply::count(out, set.map_or(0, |set| set.members.len())),
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn sismember(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Set>(&args[1]) {
        Ok(set) => {
            let found = set.is_some_and(|set| set.members.contains(&args[2]));
            reply::count(out, usize::from(found));
        }
        Err(error) => store_error(out, error),
    }
}

pub(crate) fn smembers(store: &mut Store, args: Args, out: &mut Vec<u8>) {
    match store.read::<Set>(&args[1]) {
        Ok(None) => reply::array(out, 0),
        Ok(Some(set)) => {
            reply::array(out, set.members.len());
            set.members
                .iter()
                .for_each(|member| reply::bulk(out, member));
        }
        Err(error) => store_error(out, error),
    }
}

/// SPOP key [count]: without a count one bulk string (null when the key
/// is missing), with one an array (empty when the key is missing).
pub(crate) fn spop(store: &mut Store, mut args: Args, out: &mut Vec<u8>) {
    if args.len() > 3 {
        reply::error(out, reply::SYNTAX);
        return;
    }
    let Ok(count) = pop_count(args.get(2), out) else {
        return;
    };
    let popped = store.write(take(&mut args[1]), false, |set: &mut Set| {
        (0..count.unwrap_or(1))
            .map_while(|_| set.pop())
            .collect::<Vec<_>>()
    });
    match popped {
        Err(error) => store_error(out, error),
        Ok(None) if count.is_some() => reply::array(out, 0),
        Ok(None) => reply::null(out),
        Ok(Some(members)) if count.is_some() => {
            reply::array(out, members.len());
            members.iter().for_each(|member| reply::bulk(out, member));
        }
        // A stored set is never empty, so one member was popped.
        Ok(Some(members)) => reply::bulk(out, &members[0]),
    }
}
