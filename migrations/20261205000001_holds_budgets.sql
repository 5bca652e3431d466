-- Holds and budgets (issue 15): a hold moves credits from the org to the `held` system account
-- (a `hold` transfer) and back (a `release` transfer), so an org's balance is its available
-- credits (its account) plus what it holds (Σ of its hold transfers less its releases).
-- Budgets cap spend below the org, per scope and period.

ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check CHECK (kind IN
    ('purchase','bonus','topup','usage','refund','adjustment','reversal','promo','expiry',
     'hold','release'));

INSERT INTO accounts (code) VALUES ('held');

CREATE TABLE holds (
    id                 uuid PRIMARY KEY,                 -- ours, UUIDv7; the hold transfer's id
    org_id             uuid NOT NULL REFERENCES orgs(id),
    hold_id            text NOT NULL,                    -- the client's, unique per org
    request_hash       bytea NOT NULL,
    state              text NOT NULL CHECK (state IN ('active','settled','voided','expired')),
    requested          numeric(28,6) NOT NULL CHECK (requested > 0),
    amount             numeric(28,6) NOT NULL CHECK (amount > 0),
    overage            text NOT NULL CHECK (overage IN ('reject','cap_to_available','allow')),
    user_id            text,
    api_key            text,
    model              text,
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    price_version      bigint,
    actor              text NOT NULL,
    created_at         timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    ended_at           timestamptz,
    -- Of `amount`: what the settle's usage took and what went back (settled + released = amount).
    settled            numeric(28,6) CHECK (settled >= 0),
    released           numeric(28,6) CHECK (released >= 0),
    -- The settle: its id, the usage it recorded (all of it, also past the hold), whether it
    -- came after the hold had expired.
    settle_id          text,
    settle_hash        bytea,
    usage_credits      numeric(28,6),
    late               boolean NOT NULL DEFAULT false,
    release_transfer_id uuid,
    UNIQUE (org_id, hold_id),
    CHECK (expires_at > created_at),
    CHECK ((state = 'active') = (ended_at IS NULL)),
    CHECK (state = 'active' OR settled + released = amount)
);
-- Booking and reads find an org's active holds (and those due to expire) by this.
CREATE INDEX holds_org_active ON holds (org_id, expires_at) WHERE state = 'active';
-- (The sweep finds what is due through it too: it holds active holds only, so it stays small.)
CREATE INDEX holds_org_list ON holds (org_id, id);

CREATE TABLE budgets (
    org_id            uuid NOT NULL REFERENCES orgs(id),
    id                text NOT NULL,
    scope_kind        text NOT NULL CHECK (scope_kind IN ('user','api_key','model','label')),
    scope_key         text NOT NULL DEFAULT '',          -- a label's key
    scope_value       text NOT NULL,
    limit_credits     numeric(28,6) NOT NULL CHECK (limit_credits >= 0),
    period            text NOT NULL CHECK (period IN ('day','week','month','total')),
    timezone          text NOT NULL,
    enforcement       text NOT NULL CHECK (enforcement IN ('hard','soft')),
    alert_at_percent  integer[] NOT NULL DEFAULT '{}',
    recipients        text[] NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, id)
);

-- What a budget's scope spent in one period (its start, in UTC), kept by the usage writer in
-- the booking's transaction. A new period is a new row: nothing resets, nothing runs late.
CREATE TABLE budget_spend (
    org_id            uuid NOT NULL,
    budget_id         text NOT NULL,
    period_start      timestamptz NOT NULL,
    spent             numeric(28,6) NOT NULL DEFAULT 0 CHECK (spent >= 0),
    -- The highest alert percent already sent in this period.
    alerted_percent   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, budget_id, period_start),
    FOREIGN KEY (org_id, budget_id) REFERENCES budgets (org_id, id) ON DELETE CASCADE
);

-- The platform's own API key a usage event was made through (like `user_id`, the platform's
-- word), so budgets scoped to a key count it.
ALTER TABLE usage_events ADD COLUMN api_key text;
