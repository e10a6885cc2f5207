//! The test-and-set rule on the generation number, without I/O.

/// What the arbiter knows: the latest generation granted, to whom, and
/// whether its owner has released it.
///
/// Generation 0 has no owner. A later generation has the owner that won
/// it until that owner (or an operator) releases it: a released record
/// keeps its generation and has no owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbiterState {
    pub generation: u64,
    pub owner: Option<String>,
    /// The owner's process incarnation (0 when there is no owner): a
    /// restarted process under the same node name is another claimant.
    pub incarnation: u64,
}

impl ArbiterState {
    /// The state of an arbiter that has never granted anything.
    pub const INITIAL: ArbiterState = ArbiterState {
        generation: 0,
        owner: None,
        incarnation: 0,
    };

    /// Whether `who` is the owner of the current generation.
    pub fn is_owned_by(&self, who: &Claimant) -> bool {
        self.owner.as_deref() == Some(who.node) && self.incarnation == who.incarnation
    }
}

/// Who asks: a node name plus the random incarnation id of its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant<'a> {
    pub node: &'a str,
    pub incarnation: u64,
}

/// A random incarnation id for this process: two processes never share
/// one, so a restart under the same node name is told apart.
pub fn new_incarnation() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the kernel's random source is available");
    // 0 means "no owner" in the state file.
    u64::from_le_bytes(bytes).max(1)
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claimant owns `generation` and may serve, fencing with it.
    Granted { generation: u64 },
    /// Someone else got there first: this is the current state.
    Denied {
        generation: u64,
        owner: Option<String>,
    },
}

/// The answer to a lease renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The claimant still owns `generation`; no one else is granted a new
    /// generation for `lease_ms` from when the arbiter received the request.
    Leased { generation: u64, lease_ms: u32 },
    /// The claimant no longer owns the generation it renewed: deposed.
    Denied {
        generation: u64,
        owner: Option<String>,
    },
}

/// What a claim does to the state.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Move to this new state (must be made durable before answering).
    Grant(ArbiterState),
    /// The claimant already won the current generation and lost the answer.
    Repeat {
        generation: u64,
    },
    Deny,
    /// The claim would win, but the current owner's lease has not expired:
    /// ask again later (it may still be serving).
    Wait,
}

/// Decides a claim by `who` made after it saw `expected_generation`.
/// `leased_to` is the incarnation holding an unexpired lease, if any.
///
/// A repeated claim (`expected == current - 1` by the current owner, same
/// incarnation) is answered `Granted` again without changing the state. That
/// is safe: the owner of generation g is by construction the process whose
/// claim at g-1 won, so the repeat tells it nothing false; once another
/// node has won g+1 the retry is denied like any stale claim. Another
/// process with the same node name (a restart, or an operator's mistake)
/// is another claimant and is denied.
pub(crate) fn decide(
    current: &ArbiterState,
    who: &Claimant,
    expected_generation: u64,
    leased_to: Option<u64>,
) -> Decision {
    if expected_generation == current.generation {
        if leased_to.is_some_and(|holder| holder != who.incarnation) {
            return Decision::Wait;
        }
        return match current.generation.checked_add(1) {
            Some(generation) => Decision::Grant(ArbiterState {
                generation,
                owner: Some(who.node.to_owned()),
                incarnation: who.incarnation,
            }),
            // 2^64 grants cannot happen; refusing is still the safe answer.
            None => Decision::Deny,
        };
    }
    let is_repeat =
        current.is_owned_by(who) && current.generation.checked_sub(1) == Some(expected_generation);
    if is_repeat {
        Decision::Repeat {
            generation: current.generation,
        }
    } else {
        Decision::Deny
    }
}

/// A lease may be renewed only by the owner of the generation it names.
pub(crate) fn may_renew(current: &ArbiterState, who: &Claimant, generation: u64) -> bool {
    current.generation == generation && current.is_owned_by(who)
}

/// Releasing generation `generation` clears its owner (the next claim at
/// that generation wins); a release of any other generation changes nothing.
pub(crate) fn release(current: &ArbiterState, generation: u64) -> Option<ArbiterState> {
    (current.generation == generation && current.owner.is_some()).then_some(ArbiterState {
        generation,
        owner: None,
        incarnation: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64, owner: Option<&str>, incarnation: u64) -> ArbiterState {
        ArbiterState {
            generation,
            owner: owner.map(str::to_owned),
            incarnation,
        }
    }

    fn who(node: &str, incarnation: u64) -> Claimant<'_> {
        Claimant { node, incarnation }
    }

    #[test]
    fn claim_at_current_generation_is_granted_the_next() {
        assert_eq!(
            decide(&ArbiterState::INITIAL, &who("a", 1), 0, None),
            Decision::Grant(state(1, Some("a"), 1))
        );
        assert_eq!(
            decide(&state(7, Some("a"), 1), &who("b", 2), 7, None),
            Decision::Grant(state(8, Some("b"), 2))
        );
        // A released record is claimed the same way.
        assert_eq!(
            decide(&state(7, None, 0), &who("b", 2), 7, None),
            Decision::Grant(state(8, Some("b"), 2))
        );
    }

    #[test]
    fn stale_or_future_claims_are_denied() {
        let s = state(5, Some("a"), 1);
        for expected in [0, 3, 6, u64::MAX] {
            assert_eq!(decide(&s, &who("b", 2), expected, None), Decision::Deny);
        }
        // The owner itself is denied too unless it is the one-behind repeat.
        assert_eq!(decide(&s, &who("a", 1), 3, None), Decision::Deny);
        assert_eq!(decide(&s, &who("a", 1), 6, None), Decision::Deny);
    }

    #[test]
    fn repeat_needs_the_same_incarnation() {
        let s = state(5, Some("a"), 1);
        assert_eq!(
            decide(&s, &who("a", 1), 4, None),
            Decision::Repeat { generation: 5 }
        );
        // Same name, another process: not the winner.
        assert_eq!(decide(&s, &who("a", 9), 4, None), Decision::Deny);
        assert_eq!(decide(&s, &who("b", 1), 4, None), Decision::Deny);
        assert_eq!(
            decide(&ArbiterState::INITIAL, &who("a", 1), u64::MAX, None),
            Decision::Deny
        );
    }

    #[test]
    fn an_unexpired_lease_holds_off_other_claimants() {
        let s = state(5, Some("a"), 1);
        assert_eq!(decide(&s, &who("b", 2), 5, Some(1)), Decision::Wait);
        // The holder itself may move on (it cannot be racing itself).
        assert_eq!(
            decide(&s, &who("a", 1), 5, Some(1)),
            Decision::Grant(state(6, Some("a"), 1))
        );
        // A stale claim is denied whatever the lease.
        assert_eq!(decide(&s, &who("b", 2), 4, Some(1)), Decision::Deny);
    }

    #[test]
    fn only_the_owner_renews_and_release_clears_the_owner() {
        let s = state(5, Some("a"), 1);
        assert!(may_renew(&s, &who("a", 1), 5));
        assert!(!may_renew(&s, &who("a", 2), 5));
        assert!(!may_renew(&s, &who("a", 1), 4));
        assert!(!may_renew(&state(5, None, 0), &who("a", 1), 5));
        assert_eq!(release(&s, 5), Some(state(5, None, 0)));
        assert_eq!(release(&s, 4), None);
        assert_eq!(release(&state(5, None, 0), 5), None);
    }

    #[test]
    fn generation_cannot_wrap() {
        assert_eq!(
            decide(&state(u64::MAX, Some("a"), 1), &who("b", 2), u64::MAX, None),
            Decision::Deny
        );
    }
}
