use chrono::{Duration, TimeZone};
use proptest::prelude::*;
use rust_decimal::prelude::ToPrimitive;

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
}

fn micros(n: i64) -> Credits {
    Credits::from_stored(Decimal::new(n, 6))
}

fn to_micros(c: Credits) -> i64 {
    (c.as_decimal() * Decimal::from(1_000_000))
        .to_i64()
        .unwrap()
}

fn ai(model: &str) -> UsageScope {
    UsageScope {
        usage_type: "ai_tokens",
        name: model.into(),
    }
}

fn terms(priority: u8, expires_at: Option<DateTime<Utc>>, promo: bool) -> GrantTerms {
    GrantTerms {
        priority,
        expires_at,
        ..GrantTerms::plain(if promo {
            GrantSource::Promo
        } else {
            GrantSource::Purchase
        })
    }
}

#[test]
fn usage_takes_the_restricted_grant_then_priority_then_expiry_then_promotional() {
    let mut w = Wallet::default();
    let (paid, promo, soon, gpt) = (
        Uuid::from_u128(1),
        Uuid::from_u128(2),
        Uuid::from_u128(3),
        Uuid::from_u128(4),
    );
    let at = t0();
    let credit = |w: &mut Wallet, id, t: GrantTerms| {
        w.apply(id, TransferKind::Purchase, micros(10), &Flow::New(t), at)
            .unwrap()
    };
    credit(&mut w, paid, terms(50, None, false));
    credit(&mut w, promo, terms(50, None, true));
    credit(&mut w, soon, terms(50, Some(at + Duration::days(9)), false));
    let mut only_gpt = terms(50, None, true);
    only_gpt.applies_to = Some(AppliesTo {
        models: vec!["gpt".into()],
        ..AppliesTo::default()
    });
    credit(&mut w, gpt, only_gpt);

    let order: Vec<Uuid> = w.grants().iter().map(|g| g.id).collect();
    assert_eq!(order, vec![gpt, soon, promo, paid]);
    let m = w
        .apply(
            Uuid::nil(),
            TransferKind::Usage,
            micros(-25),
            &Flow::Usage(ai("claude")),
            at,
        )
        .unwrap();
    assert_eq!(
        m.moves,
        vec![
            GrantMove {
                grant_id: Some(soon),
                amount: micros(-10)
            },
            GrantMove {
                grant_id: Some(promo),
                amount: micros(-10)
            },
            GrantMove {
                grant_id: Some(paid),
                amount: micros(-5)
            },
        ]
    );
    let m = w
        .apply(
            Uuid::nil(),
            TransferKind::Usage,
            micros(-12),
            &Flow::Usage(ai("gpt")),
            at,
        )
        .unwrap();
    assert_eq!(
        m.moves,
        vec![
            GrantMove {
                grant_id: Some(gpt),
                amount: micros(-10)
            },
            GrantMove {
                grant_id: Some(paid),
                amount: micros(-2)
            },
        ]
    );
}

#[test]
fn overdraft_is_repaid_first_by_the_next_grant() {
    let mut w = Wallet::default();
    let at = t0();
    let m = w
        .apply(
            Uuid::nil(),
            TransferKind::Usage,
            micros(-7),
            &Flow::Usage(ai("m")),
            at,
        )
        .unwrap();
    assert_eq!(
        m.moves,
        vec![GrantMove {
            grant_id: None,
            amount: micros(-7)
        }]
    );
    let g = Uuid::from_u128(9);
    let m = w
        .apply(g, TransferKind::Purchase, micros(10), &Flow::Order, at)
        .unwrap();
    let sum = m.moves.iter().map(|m| to_micros(m.amount)).sum::<i64>();
    assert_eq!(sum, 10);
    assert_eq!(w.overdraft, Credits::ZERO);
    assert_eq!(w.grant(g).unwrap().remaining, micros(3));
    assert_eq!(w.balance().unwrap(), micros(3));
}

#[test]
fn a_draw_of_named_grants_that_hold_too_little_changes_nothing() {
    let g = Uuid::from_u128(1);
    let mut w = Wallet::default();
    w.apply(g, TransferKind::Purchase, micros(5), &Flow::Order, t0())
        .unwrap();
    let before = w.clone();
    assert_eq!(
        w.apply(
            Uuid::nil(),
            TransferKind::Refund,
            micros(-6),
            &Flow::Grants(vec![g]),
            t0()
        ),
        Err(GrantError::Insufficient {
            available: micros(5),
            asked: micros(6)
        })
    );
    assert_eq!(w, before);
}

#[test]
fn the_bonus_loses_the_fraction_of_its_remainder_the_refund_takes_of_the_paid_credits() {
    assert_eq!(
        bonus_share(micros(100), micros(25), micros(40)).unwrap(),
        micros(10)
    );
    assert_eq!(
        bonus_share(micros(100), micros(100), micros(40)).unwrap(),
        micros(40)
    );
    assert_eq!(
        bonus_share(micros(3), micros(1), micros(1)).unwrap(),
        micros(0)
    );
}

/// The reference: each grant as integers of micro-credits, the order written out rule by rule.
#[derive(Debug, Clone)]
struct RefGrant {
    id: Uuid,
    amount: i64,
    consumed: i64,
    expired: i64,
    refunded: i64,
    priority: u8,
    expires_at: Option<DateTime<Utc>>,
    promo: bool,
    effective_at: DateTime<Utc>,
    /// A restriction to one model.
    model: Option<usize>,
    expired_at: Option<DateTime<Utc>>,
}

impl RefGrant {
    fn remaining(&self) -> i64 {
        self.amount - self.consumed - self.expired - self.refunded
    }
}

const MODELS: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Op {
    Advance(i64),
    Credit {
        micros: i64,
        priority: u8,
        expires_in_hours: Option<i64>,
        promo: bool,
        model: Option<usize>,
    },
    Use {
        micros: i64,
        model: usize,
    },
    Refund {
        grant: usize,
        percent: i64,
    },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..24 * 20).prop_map(Op::Advance),
        (
            1i64..50_000_000,
            prop_oneof![Just(50u8), 0u8..=100],
            prop::option::of(1i64..24 * 60),
            any::<bool>(),
            prop::option::weighted(0.25, 0usize..3),
        )
            .prop_map(
                |(micros, priority, expires_in_hours, promo, model)| Op::Credit {
                    micros,
                    priority,
                    expires_in_hours,
                    promo,
                    model
                }
            ),
        (1i64..30_000_000, 0usize..3).prop_map(|(micros, model)| Op::Use { micros, model }),
        (0usize..16, 1i64..=100).prop_map(|(grant, percent)| Op::Refund { grant, percent }),
    ]
}

fn reference_order(grants: &[RefGrant], model: usize, at: DateTime<Utc>) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..grants.len())
        .filter(|&i| {
            let g = &grants[i];
            g.remaining() > 0
                && g.expires_at.is_none_or(|e| e > at)
                && g.model.is_none_or(|m| m == model)
        })
        .collect();
    idx.sort_by(|&x, &y| {
        let (a, b) = (&grants[x], &grants[y]);
        // 1. narrowest restriction first
        b.model
            .is_some()
            .cmp(&a.model.is_some())
            // 2. priority ascending
            .then(a.priority.cmp(&b.priority))
            // 3. expiry ascending, never last
            .then(match (a.expires_at, b.expires_at) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(p), Some(q)) => p.cmp(&q),
            })
            // 4. promotional before paid
            .then(b.promo.cmp(&a.promo))
            // 5. older first, 6. id
            .then(a.effective_at.cmp(&b.effective_at))
            .then(a.id.cmp(&b.id))
    });
    idx
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Random grants, usage, refunds and expiries over simulated months: the wallet follows the
    /// reference exactly, every grant's counters add up, Σ remaining − overdraft is the balance,
    /// and every expiry happens once, at its instant.
    #[test]
    fn wallet_matches_the_reference(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut w = Wallet::default();
        let mut model: Vec<RefGrant> = Vec::new();
        let mut overdraft = 0i64;
        let mut balance = 0i64;
        let mut at = t0();
        let mut n = 0u128;
        let mut expiries: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
        for op in ops {
            if let Op::Advance(h) = op {
                at += Duration::hours(h);
            }
            // Expiry first, as the store does before any booking at `at`.
            for (id, amount, when) in w.due(at) {
                n += 1;
                let m = w.apply(Uuid::from_u128(1 << 64 | n), TransferKind::Expiry, -amount, &Flow::Grants(vec![id]), when).unwrap();
                prop_assert_eq!(m.moves, vec![GrantMove { grant_id: Some(id), amount: -amount }]);
                expiries.push((id, when));
                balance -= to_micros(amount);
                let g = model.iter_mut().find(|g| g.id == id).unwrap();
                prop_assert_eq!(g.expires_at, Some(when));
                prop_assert!(g.expired_at.is_none(), "expired twice");
                g.expired_at = Some(when);
                g.expired += to_micros(amount);
            }
            for g in &model {
                if let Some(e) = g.expires_at && e <= at {
                    prop_assert_eq!(g.remaining(), 0, "a due grant kept credits");
                }
            }
            match op {
                Op::Advance(_) => {}
                Op::Credit { micros: amount, priority, expires_in_hours, promo, model: m } => {
                    n += 1;
                    let id = Uuid::from_u128(n);
                    let mut t = terms(priority, expires_in_hours.map(|h| at + Duration::hours(h)), promo);
                    if let Some(m) = m {
                        t.applies_to = Some(AppliesTo { models: vec![MODELS[m].into()], ..AppliesTo::default() });
                    }
                    w.apply(id, TransferKind::Purchase, micros(amount), &Flow::New(t.clone()), at).unwrap();
                    // Rule: an unrestricted grant repays the overdraft first.
                    let repaid = if m.is_none() { amount.min(overdraft) } else { 0 };
                    overdraft -= repaid;
                    balance += amount;
                    model.push(RefGrant { id, amount, consumed: repaid, expired: 0, refunded: 0, priority, expires_at: t.expires_at, promo, effective_at: at, model: m, expired_at: None });
                }
                Op::Use { micros: amount, model: m } => {
                    let mut left = amount;
                    let mut want = Vec::new();
                    for i in reference_order(&model, m, at) {
                        if left == 0 { break; }
                        let take = left.min(model[i].remaining());
                        model[i].consumed += take;
                        left -= take;
                        want.push(GrantMove { grant_id: Some(model[i].id), amount: micros(-take) });
                    }
                    if left > 0 {
                        overdraft += left;
                        want.push(GrantMove { grant_id: None, amount: micros(-left) });
                    }
                    balance -= amount;
                    let got = w.apply(Uuid::nil(), TransferKind::Usage, micros(-amount), &Flow::Usage(ai(MODELS[m])), at).unwrap();
                    prop_assert_eq!(got.moves, want);
                }
                Op::Refund { grant, percent } => {
                    if model.is_empty() { continue; }
                    let g = grant % model.len();
                    let take = model[g].remaining() * percent / 100;
                    if take == 0 { continue; }
                    let id = model[g].id;
                    w.apply(Uuid::nil(), TransferKind::Refund, micros(-take), &Flow::Grants(vec![id]), at).unwrap();
                    model[g].refunded += take;
                    balance -= take;
                }
            }
            prop_assert_eq!(to_micros(w.overdraft), overdraft);
            prop_assert_eq!(to_micros(w.balance().unwrap()), balance);
            for g in &model {
                prop_assert!(g.remaining() >= 0);
                let held = w.grant(g.id).unwrap();
                prop_assert_eq!(to_micros(held.remaining), g.remaining());
            }
        }
        // Every grant whose expiry passed with credits left expired once, at its instant.
        let mut ids: Vec<Uuid> = expiries.iter().map(|e| e.0).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), expiries.len());
    }
}
