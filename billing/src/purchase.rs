//! A purchase's life: the states it goes through and which moves between them are allowed.

crate::text_enum! {
    /// Where a checkout purchase stands. Credits exist only from `Credited`, and only after the
    /// money was received (`Paid`).
    pub enum PurchaseState {
        /// Checkout open; nothing paid yet.
        AwaitingPayment => "awaiting_payment",
        /// Paid by a method that settles later (bank debit): nothing is granted until it does.
        AwaitingFunds => "awaiting_funds",
        /// The money was received; the grant is being booked.
        Paid => "paid",
        /// The package's credits (and bonus) are on the org's balance.
        Credited => "credited",
        /// The checkout expired unpaid.
        Expired => "expired",
        /// The payment failed or the purchase could not start.
        Failed => "failed",
    }
}

impl PurchaseState {
    /// Whether a purchase in this state may move to `next`. Staying put is allowed (retries).
    pub fn can_become(self, next: PurchaseState) -> bool {
        use PurchaseState::*;
        self == next
            || matches!(
                (self, next),
                (AwaitingPayment, AwaitingFunds | Paid | Expired | Failed)
                    | (AwaitingFunds, Paid | Expired | Failed)
                    | (Paid, Credited)
            )
    }

    /// Whether nothing more will happen to the purchase.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PurchaseState::Credited | PurchaseState::Expired | PurchaseState::Failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::PurchaseState::{self, *};

    #[test]
    fn names_round_trip_through_text_and_json() {
        for s in PurchaseState::ALL {
            assert_eq!(s.as_str().parse::<PurchaseState>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("credit".parse::<PurchaseState>().is_err());
    }

    #[test]
    fn credits_only_after_payment_and_final_states_stay() {
        assert!(!AwaitingPayment.can_become(Credited));
        assert!(!AwaitingFunds.can_become(Credited));
        assert!(Paid.can_become(Credited));
        for from in [Credited, Expired, Failed] {
            assert!(from.is_final());
            for to in PurchaseState::ALL {
                assert_eq!(from.can_become(*to), from == *to, "{from} -> {to}");
            }
        }
    }
}
