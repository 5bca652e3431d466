-- Refunds of purchases: through the processor, then a proportional reversal of the credits.
CREATE TABLE refunds (
    id                uuid PRIMARY KEY,
    purchase_id       uuid NOT NULL REFERENCES purchases(id),
    org_id            uuid NOT NULL REFERENCES orgs(id),
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL,
    -- What the reversal takes back: the purchased credits and the bonus, in proportion.
    credits           numeric(24,6) NOT NULL CHECK (credits >= 0),
    bonus_credits     numeric(24,6) NOT NULL CHECK (bonus_credits >= 0),
    reason            text NOT NULL,
    requested_by      text NOT NULL,
    idempotency_key   text NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending','refunded','reversed','failed')),
    stripe_refund_id  text,
    detail            text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    UNIQUE (purchase_id, idempotency_key)
);
CREATE INDEX refunds_purchase ON refunds (purchase_id);
