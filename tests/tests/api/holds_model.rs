//! Holds against a reference model, with the clock: random purchases, holds (every overage
//! policy), settles under, at and over their hold, voids, expiries, plain usage and changes of
//! a hard daily budget, through the API. After every step the balance is `available + held`,
//! available never goes below the org's floor, and balance, available, held and the budget's
//! spent and held are the model's exactly; at the end every hold is in the model's state (one
//! terminal state each, `settled + released = amount`) and the ledger's invariants hold.
use std::{collections::BTreeMap, str::FromStr};

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use proptest::prelude::*;
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tests::{AppOptions, OPERATOR_KEY, TestApp, TestOrg};

/// Amounts are in quarter credits (a quarter is 1,000 gpt-4o input tokens).
fn q(n: u32) -> Decimal {
    Decimal::from(n) / Decimal::from(4)
}

fn text(d: Decimal) -> String {
    d.normalize().to_string()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal: {v}"))).unwrap()
}

const FLOOR: i64 = -5;

#[derive(Debug, Clone)]
enum Op {
    Buy(u32),
    Hold {
        ann: bool,
        quarters: u32,
        overage: u8,
        ttl_s: u32,
    },
    /// 0: under the hold, 1: exactly, 2: over it by `extra`.
    Settle {
        pick: usize,
        mode: u8,
        extra: u32,
    },
    Void {
        pick: usize,
    },
    Use {
        ann: bool,
        quarters: u32,
    },
    Advance(u32),
    Budget(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u32..200).prop_map(Op::Buy),
        5 => (any::<bool>(), 1u32..120, 0u8..3, 1u32..300)
            .prop_map(|(ann, quarters, overage, ttl_s)| Op::Hold { ann, quarters, overage, ttl_s }),
        4 => (any::<usize>(), 0u8..3, 1u32..40).prop_map(|(pick, mode, extra)| Op::Settle { pick, mode, extra }),
        1 => any::<usize>().prop_map(|pick| Op::Void { pick }),
        2 => (any::<bool>(), 1u32..60).prop_map(|(ann, quarters)| Op::Use { ann, quarters }),
        2 => (1u32..900).prop_map(Op::Advance),
        1 => (0u32..400).prop_map(Op::Budget),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Active,
    Settled,
    Voided,
    Expired,
}

#[derive(Debug, Clone)]
struct MHold {
    id: String,
    amount: Decimal,
    expires_at: DateTime<Utc>,
    ann: bool,
    state: St,
    settled: Decimal,
    released: Decimal,
    /// A settle came (one per hold: another is refused, late or not).
    settle_seen: bool,
}

/// The rules, written again from their statement (`billing::holds`, `billing::budgets`).
#[derive(Debug, Default)]
struct Model {
    available: Decimal,
    holds: Vec<MHold>,
    /// The hard daily budget on user ann: its limit, and ann's usage per UTC day.
    limit: Option<Decimal>,
    spent: BTreeMap<chrono::NaiveDate, Decimal>,
}

impl Model {
    fn floor() -> Decimal {
        Decimal::from(FLOOR)
    }

    fn held(&self) -> Decimal {
        self.holds
            .iter()
            .filter(|h| h.state == St::Active)
            .map(|h| h.amount)
            .sum()
    }

    fn ann_held(&self) -> Decimal {
        self.holds
            .iter()
            .filter(|h| h.state == St::Active && h.ann)
            .map(|h| h.amount)
            .sum()
    }

    fn spent_on(&self, at: DateTime<Utc>) -> Decimal {
        self.spent
            .get(&at.date_naive())
            .copied()
            .unwrap_or_default()
    }

    /// Holds at or past their expiry give their credits back.
    fn expire(&mut self, now: DateTime<Utc>) {
        for h in &mut self.holds {
            if h.state == St::Active && h.expires_at <= now {
                h.state = St::Expired;
                h.released = h.amount;
                self.available += h.amount;
            }
        }
    }

    /// Usage of `cost`: recorded unless it takes available below the floor.
    fn usage(&mut self, cost: Decimal, ann: bool, now: DateTime<Utc>) -> Decimal {
        if self.available - cost < Model::floor() {
            return Decimal::ZERO;
        }
        self.available -= cost;
        if ann {
            *self.spent.entry(now.date_naive()).or_default() += cost;
        }
        cost
    }
}

async fn call(app: &TestApp, key: &str, method: Method, path: &str, body: Value) -> tests::Answer {
    app.call(method, path, Some(key), Some(&body), &[]).await
}

async fn run_case(app: &TestApp, clock: &store::Clock, case: usize, ops: &[Op]) {
    // Start half an hour before a UTC midnight, so many cases cross the budget's reset.
    let mut now = Utc.with_ymd_and_hms(2026, 12, 6, 23, 30, 0).unwrap() + Span::days(case as i64);
    clock.set(now);
    let org: TestOrg = app.create_org(&format!("model-{case}")).await;
    let limit = call(
        app,
        OPERATOR_KEY,
        Method::PUT,
        &format!("/v1/orgs/{}/overdraft-limit", org.id),
        json!({"overdraft_limit_credits": (-FLOOR).to_string()}),
    )
    .await;
    assert_eq!(limit.status, 200, "{}", limit.text);
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let tag = format!("{case}-{step}");
        m.expire(now);
        match op {
            Op::Buy(n) => {
                let a = app.adjust(org.id, &text(q(*n)), "buy", &tag).await;
                assert_eq!(a.status, 201, "{}", a.text);
                m.available += q(*n);
            }
            Op::Hold {
                ann,
                quarters,
                overage,
                ttl_s,
            } => {
                let requested = q(*quarters);
                let policy = ["reject", "cap_to_available", "allow"][*overage as usize];
                let mut body = json!({"hold_id": tag, "amount_credits": text(requested),
                                      "overage": policy, "ttl_ms": i64::from(*ttl_s) * 1000});
                if *ann {
                    body["user"] = json!("ann");
                }
                let a = call(
                    app,
                    &org.key,
                    Method::POST,
                    &format!("/v1/orgs/{}/holds", org.id),
                    body,
                )
                .await;
                // The model's decision: every layer at once.
                let org_room = if *overage == 2 {
                    m.available - Model::floor()
                } else {
                    m.available
                };
                let budget_room = m
                    .limit
                    .filter(|_| *ann)
                    .map(|l| l - m.spent_on(now) - m.ann_held());
                let decided = if *overage == 1 {
                    let mut amount = requested.min(org_room);
                    let ok_org = org_room > Decimal::ZERO;
                    let ok_budget = budget_room.is_none_or(|r| r > Decimal::ZERO);
                    if let Some(r) = budget_room {
                        amount = amount.min(r);
                    }
                    (ok_org && ok_budget).then_some(amount)
                } else {
                    (requested <= org_room && budget_room.is_none_or(|r| requested <= r))
                        .then_some(requested)
                };
                match decided {
                    Some(amount) => {
                        assert_eq!(a.status, 201, "{op:?} {m:?}: {}", a.text);
                        assert_eq!(dec(&a.body["amount_credits"]), amount, "{op:?}");
                        m.available -= amount;
                        m.holds.push(MHold {
                            id: tag.clone(),
                            amount,
                            expires_at: now + Span::seconds(i64::from(*ttl_s)),
                            ann: *ann,
                            state: St::Active,
                            settled: Decimal::ZERO,
                            released: Decimal::ZERO,
                            settle_seen: false,
                        });
                    }
                    None => assert_eq!(a.status, 402, "{op:?} {m:?}: {}", a.text),
                }
            }
            Op::Settle { pick, mode, extra } => {
                if m.holds.is_empty() {
                    continue;
                }
                let i = pick % m.holds.len();
                let h = m.holds[i].clone();
                let quarters = (h.amount * Decimal::from(4))
                    .trunc()
                    .to_string()
                    .parse::<u32>()
                    .unwrap();
                let used_q = match mode {
                    0 => quarters / 2,
                    1 => quarters,
                    _ => quarters + extra,
                };
                let body = if used_q == 0 {
                    json!({"settle_id": tag, "amount_credits": "0.25"})
                } else {
                    json!({"settle_id": tag, "events": [{"id": tag, "type": "ai_tokens",
                           "occurred_at": Utc::now().to_rfc3339(), "model": "gpt-4o",
                           "input_tokens": u64::from(used_q) * 1000}]})
                };
                let used = if used_q == 0 { q(1) } else { q(used_q) };
                let a = call(
                    app,
                    &org.key,
                    Method::POST,
                    &format!("/v1/holds/{}/settle", h.id),
                    body,
                )
                .await;
                if h.settle_seen || matches!(h.state, St::Settled | St::Voided) {
                    assert_eq!(a.status, 409, "{op:?} {h:?}: {}", a.text);
                    continue;
                }
                m.holds[i].settle_seen = true;
                match h.state {
                    St::Settled | St::Voided => unreachable!("refused above"),
                    St::Active => {
                        m.available += h.amount;
                        let charged = m.usage(used, h.ann, now);
                        let settled = charged.min(h.amount);
                        let mh = &mut m.holds[i];
                        mh.state = St::Settled;
                        mh.settled = settled;
                        mh.released = h.amount - settled;
                    }
                    St::Expired => {
                        // Late: recorded as usage all the same.
                        m.usage(used, h.ann, now);
                    }
                }
                assert_eq!(a.status, 200, "{op:?} {h:?}: {}", a.text);
                assert_eq!(a.body["hold"]["late"], h.state == St::Expired, "{}", a.text);
            }
            Op::Void { pick } => {
                if m.holds.is_empty() {
                    continue;
                }
                let i = pick % m.holds.len();
                let h = m.holds[i].clone();
                let a = call(
                    app,
                    &org.key,
                    Method::POST,
                    &format!("/v1/holds/{}/void", h.id),
                    json!({}),
                )
                .await;
                match h.state {
                    St::Active => {
                        assert_eq!(a.status, 200, "{}", a.text);
                        m.available += h.amount;
                        let mh = &mut m.holds[i];
                        mh.state = St::Voided;
                        mh.released = h.amount;
                    }
                    St::Voided => assert_eq!(a.status, 200, "{}", a.text),
                    St::Settled | St::Expired => assert_eq!(a.status, 409, "{}", a.text),
                }
            }
            Op::Use { ann, quarters } => {
                let mut e = json!({"id": tag, "type": "ai_tokens",
                                   "occurred_at": Utc::now().to_rfc3339(), "model": "gpt-4o",
                                   "input_tokens": u64::from(*quarters) * 1000});
                if *ann {
                    e["user"] = json!("ann");
                }
                let a = call(
                    app,
                    &org.key,
                    Method::POST,
                    "/v1/usage",
                    json!({"events": [e]}),
                )
                .await;
                let charged = m.usage(q(*quarters), *ann, now);
                let want = if charged.is_zero() {
                    "rejected"
                } else {
                    "accepted"
                };
                assert_eq!(
                    a.body["results"][0]["status"], want,
                    "{op:?} {m:?}: {}",
                    a.text
                );
            }
            Op::Advance(s) => {
                now += Span::seconds(i64::from(*s));
                clock.set(now);
                m.expire(now);
            }
            Op::Budget(n) => {
                let a = call(
                    app,
                    &org.key,
                    Method::PUT,
                    &format!("/v1/orgs/{}/budgets/ann-day", org.id),
                    json!({"scope": {"user": "ann"}, "limit_credits": text(q(*n)),
                           "period": "day", "enforcement": "hard"}),
                )
                .await;
                assert!(a.status == 200 || a.status == 201, "{}", a.text);
                m.limit = Some(q(*n));
            }
        }
        // After every step: the balance is available + held, exactly the model's.
        let b = app
            .get(&format!("/v1/orgs/{}/balance", org.id), &org.key)
            .await;
        let (total, available, held) = (
            dec(&b.body["balance_credits"]),
            dec(&b.body["available_credits"]),
            dec(&b.body["held_credits"]),
        );
        assert_eq!(total, available + held, "step {step} {op:?}");
        assert_eq!(
            (available, held),
            (m.available, m.held()),
            "step {step} {op:?}: {m:?}"
        );
        assert!(available >= Model::floor(), "step {step}: below the floor");
        if m.limit.is_some() {
            let list = app
                .get(&format!("/v1/orgs/{}/budgets", org.id), &org.key)
                .await;
            let v = &list.body["data"][0];
            assert_eq!(
                (dec(&v["spent_credits"]), dec(&v["held_credits"])),
                (m.spent_on(now), m.ann_held()),
                "step {step} {op:?}: {}",
                list.text
            );
        }
    }
    // Every hold in exactly the model's state.
    for h in &m.holds {
        let a = app.get(&format!("/v1/holds/{}", h.id), &org.key).await;
        let want = match h.state {
            St::Active => "active",
            St::Settled => "settled",
            St::Voided => "voided",
            St::Expired => "expired",
        };
        assert_eq!(a.body["state"], want, "{h:?}: {}", a.text);
        if h.state != St::Active {
            let (s, r) = (
                dec(&a.body["settled_credits"]),
                dec(&a.body["released_credits"]),
            );
            assert_eq!(s + r, h.amount, "{}", a.text);
            assert_eq!((s, r), (h.settled, h.released), "{h:?}: {}", a.text);
        }
    }
}

#[test]
fn holds_settles_voids_expiries_usage_and_budgets_match_the_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = store::Clock::manual(Utc::now());
    let app = rt
        .block_on(TestApp::spawn_with(AppOptions {
            clock: Some(clock.clone()),
            ..AppOptions::default()
        }))
        .unwrap();
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: std::env::var("HOLDS_MODEL_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(op(), 10..45), |ops| {
            let case = cases.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            rt.block_on(run_case(&app, &clock, case, &ops));
            Ok(())
        })
        .unwrap();
    rt.block_on(app.assert_invariants());
}
