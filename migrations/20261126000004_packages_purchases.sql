-- Credit packages, purchases (checkouts), payment-processor events and e-mail sends.

CREATE TABLE credit_packages (
    id             uuid PRIMARY KEY,
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    price_minor    bigint NOT NULL CHECK (price_minor > 0),
    currency       text NOT NULL CHECK (currency IN ('usd','eur','gbp','jpy')),
    base_credits   numeric(24,6) NOT NULL CHECK (base_credits > 0),
    bonus_credits  numeric(24,6) NOT NULL CHECK (bonus_credits >= 0),
    active         boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The starter catalog: the bonus grows with the size (1 credit = 1 US cent at list price).
INSERT INTO credit_packages (id, name, price_minor, currency, base_credits, bonus_credits) VALUES
    ('01970000-0000-7000-8000-000000000001', 'Starter', 1000,  'usd', 1000,  0),
    ('01970000-0000-7000-8000-000000000002', 'Growth',  5000,  'usd', 5000,  250),
    ('01970000-0000-7000-8000-000000000003', 'Scale',   20000, 'usd', 20000, 2000);

-- A purchase is one checkout of one package; it keeps a snapshot of the package it bought.
CREATE TABLE purchases (
    id                    uuid PRIMARY KEY,
    org_id                uuid NOT NULL REFERENCES orgs(id),
    package_id            uuid NOT NULL REFERENCES credit_packages(id),
    package               jsonb NOT NULL,
    buyer                 text NOT NULL,
    receipt_email         text,
    state                 text NOT NULL DEFAULT 'awaiting_payment'
                            CHECK (state IN ('awaiting_payment','paid','credited','expired','failed')),
    checkout_session_id   text UNIQUE,
    checkout_url          text,
    payment_intent_id     text,
    expires_at            timestamptz NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    paid_at               timestamptz,
    credited_at           timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX purchases_org ON purchases (org_id, created_at);

-- Each payment-processor event is handled once, whatever the number of deliveries.
CREATE TABLE stripe_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per e-mail that must go out once (receipts, alerts), keyed by its business reason.
CREATE TABLE email_sends (
    key         text PRIMARY KEY,
    recipients  text NOT NULL,
    subject     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
