//! The pure half of booking: given the locked orgs' balances and a batch of postings, compute
//! every transfer's balance after and sequence number, refuse what may not overdraw, find the
//! threshold crossings, and sum each account's debits and credits. The store does the I/O
//! (lock, insert, update) around it and checks that Postgres agrees.
//!
//! The invariants are asserted here, where they are computed: a failing one is a bug in this
//! file, never an input an org can send.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{Account, BillingError, Credits, Posting, SystemAccount, TransferKind, text_enum};

text_enum! {
    /// What a balance threshold is for.
    pub enum ThresholdPurpose {
        /// E-mail the org's recipients when the balance falls below it.
        Alert => "alert",
        /// Buy the org's auto-topup package when the balance falls below it.
        AutoTopup => "auto_topup",
    }
}

/// One of an org's thresholds, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub id: i64,
    pub purpose: ThresholdPurpose,
    pub level: Credits,
}

/// An org's ledger state under its lock: balance and position of its last transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct OrgLedger {
    pub balance: Credits,
    pub seq: i64,
    pub thresholds: Vec<Threshold>,
}

impl OrgLedger {
    /// The org's highest threshold for `purpose`.
    pub fn threshold(&self, purpose: ThresholdPurpose) -> Option<Threshold> {
        self.thresholds
            .iter()
            .filter(|t| t.purpose == purpose)
            .max_by_key(|t| t.level)
            .copied()
    }
}

/// What booking one posting does to its org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub org: Uuid,
    /// The org's sequence number of this transfer: one more than the one before.
    pub seq: i64,
    /// Signed from the org's point of view.
    pub delta: Credits,
    pub after: Credits,
    /// The system account on the other side.
    pub counterparty: SystemAccount,
}

/// A balance that fell from at-or-above a threshold to below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    pub org: Uuid,
    pub threshold_id: i64,
    pub purpose: ThresholdPurpose,
    pub threshold: Credits,
    /// The balance right after the crossing transfer.
    pub balance: Credits,
    /// The crossing transfer's sequence number.
    pub crossing_seq: i64,
    /// The crossing transfer's index in the batch.
    pub posting: usize,
}

/// Debits and credits posted to one account (or one org and kind) by a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sides {
    pub debits: Decimal,
    pub credits: Decimal,
}

/// Why a batch cannot be booked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// A posting that may not overdraw would take its org below zero.
    #[error("insufficient balance: {balance} would become {would_be}")]
    InsufficientBalance { balance: Credits, would_be: Credits },
    /// A posting for an org the caller did not lock.
    #[error("booking for org {0}, which is not locked")]
    NotLocked(Uuid),
    #[error(transparent)]
    Billing(#[from] BillingError),
}

/// A batch of postings, applied: what the store writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// One per posting, in order.
    pub applied: Vec<Applied>,
    /// At most one per org and purpose: the lowest threshold crossed (ties: the later
    /// crossing), so a batch that falls through several alert levels sends one alert.
    pub crossings: Vec<Crossing>,
    /// Per org account.
    pub orgs: BTreeMap<Uuid, Sides>,
    /// Per system account.
    pub systems: BTreeMap<SystemAccount, Sides>,
    /// Per org and transfer kind (the balance's totals).
    pub kinds: BTreeMap<(Uuid, TransferKind), Sides>,
}

impl Batch {
    /// Applies `postings` in order to the locked orgs. On success the orgs' balances and
    /// sequence numbers are moved past the batch; on error nothing changes.
    pub fn apply<'a>(
        orgs: &mut BTreeMap<Uuid, OrgLedger>,
        postings: impl IntoIterator<Item = &'a Posting>,
    ) -> Result<Batch, BookError> {
        // Per org: the running balance and sequence, and how many postings moved it.
        let mut running: BTreeMap<Uuid, (Credits, i64, i64)> = BTreeMap::new();
        let mut batch = Batch::default();
        let mut lowest: BTreeMap<(Uuid, ThresholdPurpose), Crossing> = BTreeMap::new();
        for (index, p) in postings.into_iter().enumerate() {
            let ledger = orgs.get(&p.org).ok_or(BookError::NotLocked(p.org))?;
            let (before, seq, moved) =
                *running
                    .entry(p.org)
                    .or_insert((ledger.balance, ledger.seq, 0));
            let amount = p.amount.positive()?;
            let delta = p.org_delta();
            let after = before.checked_add(delta)?;
            if delta.is_negative() && after.is_negative() && !p.may_overdraw() {
                return Err(BookError::InsufficientBalance {
                    balance: before,
                    would_be: after,
                });
            }
            let seq = seq + 1;
            running.insert(p.org, (after, seq, moved + 1));
            let (counterparty, org_side) = match (p.debit, p.credit) {
                (Account::System(s), Account::Org(o)) if o == p.org => (s, true),
                (Account::Org(o), Account::System(s)) if o == p.org => (s, false),
                _ => unreachable!("a posting moves credits between its org and a system account"),
            };
            let (org, system, kind) = (
                batch.orgs.entry(p.org).or_default(),
                batch.systems.entry(counterparty).or_default(),
                batch.kinds.entry((p.org, p.kind)).or_default(),
            );
            if org_side {
                org.credits += amount.as_decimal();
                kind.credits += amount.as_decimal();
                system.debits += amount.as_decimal();
            } else {
                org.debits += amount.as_decimal();
                kind.debits += amount.as_decimal();
                system.credits += amount.as_decimal();
            }
            assert_eq!(after.as_decimal(), before.as_decimal() + delta.as_decimal());
            assert!(delta.is_positive() == org_side && !delta.is_zero());
            assert!(!after.is_negative() || !delta.is_negative() || p.may_overdraw());
            for th in &ledger.thresholds {
                if before >= th.level && after < th.level {
                    let crossing = Crossing {
                        org: p.org,
                        threshold_id: th.id,
                        purpose: th.purpose,
                        threshold: th.level,
                        balance: after,
                        crossing_seq: seq,
                        posting: index,
                    };
                    lowest
                        .entry((p.org, th.purpose))
                        .and_modify(|c| {
                            if th.level <= c.threshold {
                                *c = crossing;
                            }
                        })
                        .or_insert(crossing);
                }
            }
            batch.applied.push(Applied {
                org: p.org,
                seq,
                delta,
                after,
                counterparty,
            });
        }
        batch.crossings = lowest.into_values().collect();
        batch.assert_balanced();
        for (org, (balance, seq, postings)) in running {
            let ledger = orgs.get_mut(&org).ok_or(BookError::NotLocked(org))?;
            let moved = batch.orgs.get(&org).copied().unwrap_or_default();
            assert_eq!(
                balance.as_decimal(),
                ledger.balance.as_decimal() + moved.credits - moved.debits
            );
            assert_eq!(
                seq - ledger.seq,
                postings,
                "one sequence number per transfer"
            );
            ledger.balance = balance;
            ledger.seq = seq;
        }
        Ok(batch)
    }

    /// Debits equal credits over the batch, and per org the kinds add up to the account.
    fn assert_balanced(&self) {
        let sum = |sides: &mut dyn Iterator<Item = Sides>| {
            sides.fold((Decimal::ZERO, Decimal::ZERO), |(d, c), s| {
                (d + s.debits, c + s.credits)
            })
        };
        let (org_d, org_c) = sum(&mut self.orgs.values().copied());
        let (sys_d, sys_c) = sum(&mut self.systems.values().copied());
        assert_eq!(org_d + sys_d, org_c + sys_c, "batch debits = batch credits");
        let (kind_d, kind_c) = sum(&mut self.kinds.values().copied());
        assert_eq!((kind_d, kind_c), (org_d, org_c), "kinds add up to the orgs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(balance: i64, thresholds: &[(i64, ThresholdPurpose, i64)]) -> OrgLedger {
        OrgLedger {
            balance: Credits::whole(balance),
            seq: 7,
            thresholds: thresholds
                .iter()
                .map(|&(id, purpose, level)| Threshold {
                    id,
                    purpose,
                    level: Credits::whole(level),
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_falling_through_two_alert_levels_crosses_once_at_the_lowest() {
        let id = Uuid::from_u128(1);
        let mut orgs = BTreeMap::from([(
            id,
            org(
                100,
                &[
                    (1, ThresholdPurpose::Alert, 80),
                    (2, ThresholdPurpose::Alert, 50),
                    (3, ThresholdPurpose::AutoTopup, 60),
                ],
            ),
        )]);
        let usage = Posting::usage(id, SystemAccount::UsageAi, Credits::whole(30));
        let batch = Batch::apply(&mut orgs, [&usage, &usage]).unwrap();
        assert_eq!(orgs[&id].balance, Credits::whole(40));
        assert_eq!(orgs[&id].seq, 9);
        let alert: Vec<_> = batch
            .crossings
            .iter()
            .map(|c| (c.threshold_id, c.crossing_seq, c.posting))
            .collect();
        assert_eq!(alert, vec![(2, 9, 1), (3, 9, 1)]);
    }

    #[test]
    fn a_refused_batch_changes_nothing() {
        let id = Uuid::from_u128(1);
        let mut orgs = BTreeMap::from([(id, org(10, &[]))]);
        let before = orgs.clone();
        let ok = Posting::adjustment(id, Credits::whole(-5)).unwrap();
        let too_much = Posting::refund(id, Credits::whole(6));
        assert_eq!(
            Batch::apply(&mut orgs, [&ok, &too_much]),
            Err(BookError::InsufficientBalance {
                balance: Credits::whole(5),
                would_be: Credits::whole(-1)
            })
        );
        assert_eq!(orgs, before);
        let stranger = Posting::purchase(Uuid::from_u128(2), Credits::whole(1));
        assert_eq!(
            Batch::apply(&mut orgs, [&stranger]),
            Err(BookError::NotLocked(Uuid::from_u128(2)))
        );
    }
}

/// `Batch::apply` against the simplest model of the rules: balances as integers of
/// micro-credits, a refusal exactly when a posting that may not overdraw would end below zero,
/// and per org and purpose the lowest threshold crossed.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use rust_decimal::{Decimal, prelude::ToPrimitive};

    use super::*;

    const ORGS: u128 = 3;

    fn credits(micros: i64) -> Credits {
        Credits::from_stored(Decimal::new(micros, 6))
    }

    fn posting(org: Uuid, kind: u8, micros: i64) -> Posting {
        let amount = credits(micros);
        match kind {
            0 => Posting::purchase(org, amount),
            1 => Posting::topup(org, amount),
            2 => Posting::bonus(org, amount),
            3 => Posting::usage(org, SystemAccount::UsageAi, amount),
            4 => Posting::usage(org, SystemAccount::UsageInfra, amount),
            5 => Posting::refund(org, amount),
            6 => Posting::reversal(org, amount),
            7 => Posting::refund(org, amount).reversed(),
            _ => Posting::adjustment(org, if micros % 2 == 0 { amount } else { -amount })
                .expect("non-zero"),
        }
    }

    /// Per org: balance and thresholds (level, is an alert); then postings (org, kind, amount),
    /// all in micro-credits.
    type Case = (Vec<(i64, Vec<(i64, bool)>)>, Vec<(u128, u8, i64)>);

    fn arb_batch() -> impl Strategy<Value = Case> {
        let org = (
            -50_000_000i64..50_000_000,
            prop::collection::vec((-20_000_000i64..60_000_000, any::<bool>()), 0..4),
        );
        (
            prop::collection::vec(org, ORGS as usize),
            prop::collection::vec((0..ORGS, 0u8..9, 1i64..30_000_000), 0..24),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

        #[test]
        fn apply_matches_the_model((states, postings) in arb_batch()) {
            let mut orgs = BTreeMap::new();
            for (i, (balance, thresholds)) in states.iter().enumerate() {
                let ths = thresholds.iter().enumerate().map(|(j, &(level, alert))| Threshold {
                    id: (i * 10 + j) as i64,
                    purpose: if alert { ThresholdPurpose::Alert } else { ThresholdPurpose::AutoTopup },
                    level: credits(level),
                }).collect();
                orgs.insert(Uuid::from_u128(i as u128), OrgLedger { balance: credits(*balance), seq: i as i64, thresholds: ths });
            }
            let postings: Vec<Posting> = postings
                .iter()
                .map(|&(o, k, m)| posting(Uuid::from_u128(o), k, m))
                .collect();
            let before = orgs.clone();

            // The model.
            let mut bal: Vec<i64> = states.iter().map(|s| s.0).collect();
            let mut seq: Vec<i64> = (0..ORGS as i64).collect();
            let mut refused = None;
            let mut lowest: BTreeMap<(usize, ThresholdPurpose), (i64, i64, usize)> = BTreeMap::new();
            for (n, p) in postings.iter().enumerate() {
                let o = p.org.as_u128() as usize;
                let signed = (p.org_delta().as_decimal() * Decimal::from(1_000_000))
                    .to_i64()
                    .expect("small");
                let after = bal[o] + signed;
                if signed < 0 && after < 0 && !p.may_overdraw() {
                    refused = Some((bal[o], after));
                    break;
                }
                for (j, &(level, alert)) in states[o].1.iter().enumerate() {
                    if bal[o] >= level && after < level {
                        let purpose = if alert { ThresholdPurpose::Alert } else { ThresholdPurpose::AutoTopup };
                        let e = lowest.entry((o, purpose)).or_insert((level, (o * 10 + j) as i64, n));
                        if level <= e.0 { *e = (level, (o * 10 + j) as i64, n); }
                    }
                }
                bal[o] = after;
                seq[o] += 1;
            }

            match (Batch::apply(&mut orgs, &postings), refused) {
                (Err(BookError::InsufficientBalance { balance, would_be }), Some((b, a))) => {
                    prop_assert_eq!((balance, would_be), (credits(b), credits(a)));
                    prop_assert_eq!(&orgs, &before);
                }
                (Ok(batch), None) => {
                    for (i, o) in orgs.values().enumerate() {
                        prop_assert_eq!(o.balance, credits(bal[i]));
                        prop_assert_eq!(o.seq, seq[i]);
                    }
                    let got: Vec<_> = batch.crossings.iter()
                        .map(|c| (c.org, c.purpose, c.threshold, c.threshold_id, c.posting))
                        .collect();
                    let mut want: Vec<_> = lowest.iter()
                        .map(|(&(o, purpose), &(level, id, n))| (Uuid::from_u128(o as u128), purpose, credits(level), id, n))
                        .collect();
                    want.sort_by_key(|w| (w.0, w.1));
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(batch.applied.len(), postings.len());
                }
                (got, want) => prop_assert!(false, "apply gave {got:?}, the model {want:?}"),
            }
        }
    }
}
