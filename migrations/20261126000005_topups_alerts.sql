-- Auto-topup and low-balance alerts: per-org settings, topups with their attempts, alerts sent.

CREATE TABLE org_billing_settings (
    org_id                     uuid PRIMARY KEY REFERENCES orgs(id),
    topup_enabled              boolean NOT NULL DEFAULT false,
    topup_threshold            numeric(24,6) CHECK (topup_threshold >= 0),
    topup_package_id           uuid REFERENCES credit_packages(id),
    -- At most this much may be charged by auto-topup per calendar month (UTC), in minor units.
    topup_monthly_cap_minor    bigint CHECK (topup_monthly_cap_minor > 0),
    -- Set when auto-topup gave up; cleared when the payment method is replaced.
    topup_paused_reason        text,
    stripe_customer_id         text,
    payment_method_id          text,
    payment_method_consent_at  timestamptz,
    payment_method_consent_by  text,
    -- Who hears about low balances and failed topups.
    recipients                 text[] NOT NULL DEFAULT '{}',
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

-- One topup per threshold crossing (single flight per org is the workflow's id).
CREATE TABLE topups (
    id              uuid PRIMARY KEY,
    org_id          uuid NOT NULL REFERENCES orgs(id),
    crossing_seq    bigint NOT NULL,
    package         jsonb,
    amount_minor    bigint,
    currency        text,
    state           text NOT NULL CHECK (state IN ('running','succeeded','failed','capped','skipped')),
    detail          text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (org_id, crossing_seq)
);

-- Every charge attempt and its typed outcome.
CREATE TABLE topup_attempts (
    topup_id           uuid NOT NULL REFERENCES topups(id),
    attempt            int NOT NULL,
    outcome            text NOT NULL CHECK (outcome IN ('succeeded','soft_decline','hard_decline')),
    code               text,
    decline_code       text,
    payment_intent_id  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topup_id, attempt)
);

-- Low-balance alerts sent, one per crossing of an alert threshold.
CREATE TABLE alerts (
    org_id        uuid NOT NULL REFERENCES orgs(id),
    threshold_id  bigint NOT NULL,
    crossing_seq  bigint NOT NULL,
    threshold     numeric(24,6) NOT NULL,
    balance       numeric(24,6) NOT NULL,
    recipients    text[] NOT NULL,
    sent_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, threshold_id, crossing_seq)
);
