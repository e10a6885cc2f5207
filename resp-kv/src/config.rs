//! `CONFIG GET`: the few parameters clients ask about at start-up.
//!
//! redis-benchmark reads `save` and `appendonly` and prints an error if it
//! gets no pair back; answering them (persistence off) keeps it quiet.

use crate::num;
use crate::reply;
use crate::store::Limits;
use alloc::vec::Vec;

/// Appends the flat name/value array of every parameter that matches any of
/// `patterns`, each at most once, in table order.
pub(crate) fn get(limits: &Limits, patterns: &[Vec<u8>], out: &mut Vec<u8>) {
    let mut maxmemory = Vec::new();
    num::write_usize(&mut maxmemory, limits.maxmemory);
    let table: [(&str, &[u8]); 4] = [
        ("save", b""),
        ("appendonly", b"no"),
        ("maxmemory", &maxmemory),
        ("databases", b"1"),
    ];
    let matched: Vec<_> = table
        .iter()
        .filter(|(name, _)| patterns.iter().any(|p| glob_match(p, name.as_bytes())))
        .collect();
    reply::array(out, matched.len() * 2);
    for (name, value) in matched {
        reply::bulk(out, name.as_bytes());
        reply::bulk(out, value);
    }
}

/// Case-insensitive glob with `*` and `?` (Redis's `stringmatch` without
/// character classes or escapes, which no parameter name needs).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After a `*`: where it was, and where in `text` its match would end
    // if the rest fails and the `*` has to swallow one more byte.
    let mut backtrack = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    backtrack = Some((star, matched + 1));
                    p = star + 1;
                    t = matched + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match(b"save", b"save"));
        assert!(glob_match(b"SAVE", b"save"));
        assert!(glob_match(b"*", b"save"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"s*e", b"save"));
        assert!(glob_match(b"?ave", b"save"));
        assert!(glob_match(b"*max*", b"maxmemory"));
        assert!(glob_match(b"*o*y", b"appendonly"));
        assert!(!glob_match(b"sav", b"save"));
        assert!(!glob_match(b"save?", b"save"));
        assert!(!glob_match(b"*x", b"save"));
        assert!(!glob_match(b"", b"save"));
    }

    #[test]
    fn answers_matching_pairs_once() {
        let mut out = Vec::new();
        get(
            &Limits::DEFAULT,
            &[b"save".to_vec(), b"s*".to_vec(), b"max*".to_vec()],
            &mut out,
        );
        assert_eq!(
            out,
            b"*4\r\n$4\r\nsave\r\n$0\r\n\r\n$9\r\nmaxmemory\r\n$8\r\n33554432\r\n"
        );
        out.clear();
        get(&Limits::DEFAULT, &[b"nosuch".to_vec()], &mut out);
        assert_eq!(out, b"*0\r\n");
    }
}
