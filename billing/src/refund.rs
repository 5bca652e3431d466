//! A refund's life: credits are taken back when it is accepted (`Pending`), the processor
//! refunds the money (`Refunded`), the refund ends `Reversed`; or the processor refuses and the
//! credits come back (`Failed`).

crate::text_enum! {
    /// Where a refund stands.
    pub enum RefundState {
        /// Accepted: the credits are taken back, the processor is being asked.
        Pending => "pending",
        /// The processor refunded the money; the refund is being ended.
        Refunded => "refunded",
        /// Done: the money refunded and the credits taken back.
        Reversed => "reversed",
        /// The processor refused: the credits taken at acceptance were given back.
        Failed => "failed",
    }
}

impl RefundState {
    /// Whether a refund in this state may move to `next`. Staying put is allowed (retries).
    pub fn can_become(self, next: RefundState) -> bool {
        use RefundState::*;
        self == next
            || matches!(
                (self, next),
                (Pending, Refunded | Failed) | (Refunded, Reversed)
            )
    }

    /// Whether nothing more will happen to the refund.
    pub fn is_final(self) -> bool {
        matches!(self, RefundState::Reversed | RefundState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::RefundState::{self, *};

    #[test]
    fn names_round_trip_and_final_states_stay() {
        for s in RefundState::ALL {
            assert_eq!(s.as_str().parse::<RefundState>().unwrap(), *s);
        }
        for from in [Reversed, Failed] {
            for to in RefundState::ALL {
                assert_eq!(from.can_become(*to), from == *to);
            }
        }
        assert!(Pending.can_become(Refunded) && Refunded.can_become(Reversed));
        assert!(!Refunded.can_become(Pending));
    }
}
