-- Bounds on usage. One event costs at most ingest.max_event_cost_credits (checked before the
-- writer), and usage may overdraw an org only down to minus its overdraft limit: the org's own
-- (below), or ingest.overdraft_limit_credits when it has none. Usage beyond it is refused
-- `overdraft_limit`, counted here per org and day, and in metrics.
ALTER TABLE orgs ADD COLUMN overdraft_limit numeric(28,6) CHECK (overdraft_limit >= 0);

CREATE TABLE usage_refusals (
    org_id      uuid NOT NULL REFERENCES orgs(id),
    day         date NOT NULL,
    code        text NOT NULL,
    events      bigint NOT NULL,
    credits     numeric(28,6) NOT NULL,
    last_at     timestamptz NOT NULL,
    PRIMARY KEY (org_id, day, code)
);

-- Running totals were numeric(24,6): at most 10^18, so a system account (every org's usage)
-- could overflow after 10^6 events of the largest amount, and then every batch would fail.
-- Now 10^22: an org's usage is bounded by what came in (purchases, topups and adjustments,
-- each at most 10^12) plus its overdraft limit (at most 10^12), so reaching it would take
-- 10^10 of the largest grants. 28 digits at scale 6 still fit rust_decimal (about 7.9 * 10^22
-- at that scale). Raising a numeric's precision at the same scale rewrites no table.
ALTER TABLE accounts
    ALTER COLUMN debits_posted TYPE numeric(28,6),
    ALTER COLUMN credits_posted TYPE numeric(28,6);
ALTER TABLE org_kind_totals
    ALTER COLUMN debits_posted TYPE numeric(28,6),
    ALTER COLUMN credits_posted TYPE numeric(28,6);
ALTER TABLE transfers ALTER COLUMN balance_after TYPE numeric(28,6);
ALTER TABLE monthly_summaries
    ALTER COLUMN opening TYPE numeric(28,6),
    ALTER COLUMN purchased TYPE numeric(28,6),
    ALTER COLUMN bonus TYPE numeric(28,6),
    ALTER COLUMN topup TYPE numeric(28,6),
    ALTER COLUMN refunded TYPE numeric(28,6),
    ALTER COLUMN adjusted TYPE numeric(28,6),
    ALTER COLUMN reversed TYPE numeric(28,6),
    ALTER COLUMN used TYPE numeric(28,6),
    ALTER COLUMN closing TYPE numeric(28,6);
