//! The test-and-set rule on the generation number, without I/O.

/// What the arbiter knows: the latest generation granted and to whom.
///
/// Generation 0 has no owner; every later generation has exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArbiterState {
    pub generation: u64,
    pub owner: Option<String>,
}

impl ArbiterState {
    /// The state of an arbiter that has never granted anything.
    pub const INITIAL: ArbiterState = ArbiterState {
        generation: 0,
        owner: None,
    };
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
}

/// Decides a claim by `node` made after it saw `expected_generation`.
///
/// A repeated claim (`expected == current - 1` by the current owner) is
/// answered `Granted` again without changing the state. That is safe: the
/// owner of generation g is by construction the node whose claim at g-1 won,
/// so the repeat tells the claimant nothing false; it only holds while g is
/// still the latest generation (once another node has won g+1 the retry is
/// denied like any stale claim). It relies on node names being unique: two
/// processes sharing one name are one claimant to the arbiter.
pub(crate) fn decide(current: &ArbiterState, node: &str, expected_generation: u64) -> Decision {
    if expected_generation == current.generation {
        return match current.generation.checked_add(1) {
            Some(generation) => Decision::Grant(ArbiterState {
                generation,
                owner: Some(node.to_owned()),
            }),
            // 2^64 grants cannot happen; refusing is still the safe answer.
            None => Decision::Deny,
        };
    }
    let is_repeat = current.owner.as_deref() == Some(node)
        && current.generation.checked_sub(1) == Some(expected_generation);
    if is_repeat {
        Decision::Repeat {
            generation: current.generation,
        }
    } else {
        Decision::Deny
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64, owner: Option<&str>) -> ArbiterState {
        ArbiterState {
            generation,
            owner: owner.map(str::to_owned),
        }
    }

    #[test]
    fn claim_at_current_generation_is_granted_the_next() {
        assert_eq!(
            decide(&ArbiterState::INITIAL, "a", 0),
            Decision::Grant(state(1, Some("a")))
        );
        assert_eq!(
            decide(&state(7, Some("a")), "b", 7),
            Decision::Grant(state(8, Some("b")))
        );
    }

    #[test]
    fn stale_or_future_claims_are_denied() {
        let s = state(5, Some("a"));
        for expected in [0, 3, 6, u64::MAX] {
            assert_eq!(decide(&s, "b", expected), Decision::Deny, "{expected}");
        }
        // The owner itself is denied too unless it is the one-behind repeat.
        assert_eq!(decide(&s, "a", 3), Decision::Deny);
        assert_eq!(decide(&s, "a", 6), Decision::Deny);
    }

    #[test]
    fn repeat_by_the_owner_is_granted_again_without_change() {
        let s = state(5, Some("a"));
        assert_eq!(decide(&s, "a", 4), Decision::Repeat { generation: 5 });
        assert_eq!(decide(&s, "b", 4), Decision::Deny);
        assert_eq!(
            decide(&ArbiterState::INITIAL, "a", u64::MAX),
            Decision::Deny
        );
    }

    #[test]
    fn generation_cannot_wrap() {
        assert_eq!(
            decide(&state(u64::MAX, Some("a")), "b", u64::MAX),
            Decision::Deny
        );
    }
}
