//! Inbound frames forwarded to the backup as soon as the primary takes
//! them from its NIC, before the guest has them.
//!
//! Both ends keep the same set, changed only by messages in stream order:
//! a `Frame` adds one, a `ForwardedEntry` (an rx-frame entry that names
//! it instead of carrying it) or a `Withdrawn` removes it. A backup that
//! goes live delivers what is left, in arrival order, as fresh inputs:
//! the primary took those frames but never logged them, so otherwise only
//! the client's retransmission timer would bring them back.
//!
//! A frame is forwarded before it is queued to the guest, so its entry
//! always finds it here; an entry names the oldest frame with the same
//! bytes, so the guest gets exactly the bytes it got on the primary.

use std::collections::BTreeMap;

/// Frames forwarded and not yet logged, at most: more than the primary's
/// queue to the guest holds, so only a broken peer reaches it.
pub const MAX_FORWARDED: usize = 8192;

#[derive(Default)]
pub(crate) struct Forwarded {
    next_id: u64,
    frames: BTreeMap<u64, Vec<u8>>,
}

impl Forwarded {
    /// The primary's side: keeps `frame` under the next id, or refuses
    /// (`None`) when full; its entry then carries it whole.
    pub(crate) fn add(&mut self, frame: &[u8]) -> Option<u64> {
        if self.frames.len() >= MAX_FORWARDED {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.frames.insert(id, frame.to_vec());
        Some(id)
    }

    /// The backup's side of [`Forwarded::add`]: the id must be the next one.
    pub(crate) fn insert(&mut self, id: u64, frame: Vec<u8>) -> Result<(), String> {
        if id != self.next_id {
            return Err(format!(
                "forwarded frame {id} where {} was due",
                self.next_id
            ));
        }
        if self.frames.len() >= MAX_FORWARDED {
            return Err(format!(
                "more than {MAX_FORWARDED} forwarded frames that no entry named"
            ));
        }
        self.next_id += 1;
        self.frames.insert(id, frame);
        Ok(())
    }

    /// The primary's side of an rx-frame entry: the oldest forwarded frame
    /// with these bytes, taken out.
    pub(crate) fn take_matching(&mut self, frame: &[u8]) -> Option<u64> {
        let id = *self
            .frames
            .iter()
            .find(|(_, kept)| kept.as_slice() == frame)?
            .0;
        self.frames.remove(&id);
        Some(id)
    }

    /// Takes frame `id` out (named by an entry, or withdrawn).
    pub(crate) fn take(&mut self, id: u64) -> Option<Vec<u8>> {
        self.frames.remove(&id)
    }

    /// What no entry named, in the order the primary took it.
    pub(crate) fn into_unlogged(self) -> Vec<Vec<u8>> {
        self.frames.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The primary's and the backup's sets after the same messages.
    fn mirrored(frames: &[&[u8]]) -> (Forwarded, Forwarded) {
        let (mut primary, mut backup) = (Forwarded::default(), Forwarded::default());
        for frame in frames {
            let id = primary.add(frame).unwrap();
            backup.insert(id, frame.to_vec()).unwrap();
        }
        (primary, backup)
    }

    #[test]
    fn an_entry_names_the_oldest_frame_with_its_bytes_and_both_ends_agree() {
        let (mut primary, mut backup) = mirrored(&[b"arp", b"syn", b"arp"]);
        // A frame queued before forwarding began, with the same bytes as a
        // forwarded one, takes that one: the guest gets the same bytes.
        let id = primary.take_matching(b"arp").unwrap();
        assert_eq!(id, 0);
        assert_eq!(backup.take(id).unwrap(), b"arp");
        assert_eq!(primary.take_matching(b"syn"), Some(1));
        assert_eq!(primary.take_matching(b"fin"), None);
        backup.take(1).unwrap();
        assert_eq!(backup.into_unlogged(), [b"arp".to_vec()]);
        assert_eq!(primary.into_unlogged(), [b"arp".to_vec()]);
    }

    #[test]
    fn a_full_set_refuses_more_and_a_peer_that_skips_or_floods_is_caught() {
        let mut primary = Forwarded::default();
        for _ in 0..MAX_FORWARDED {
            primary.add(b"x").unwrap();
        }
        assert_eq!(primary.add(b"x"), None);

        let mut backup = Forwarded::default();
        let err = backup.insert(1, b"x".to_vec()).unwrap_err();
        assert_eq!(err, "forwarded frame 1 where 0 was due");
        for id in 0..MAX_FORWARDED as u64 {
            backup.insert(id, b"x".to_vec()).unwrap();
        }
        let err = backup
            .insert(MAX_FORWARDED as u64, b"x".to_vec())
            .unwrap_err();
        assert!(err.starts_with("more than 8192"), "{err}");
    }
}
