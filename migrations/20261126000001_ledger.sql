-- The credits ledger: organizations, their API keys, accounts and immutable transfers.
-- Amounts are NUMERIC(24,6): six decimals is the fixed scale of billing::Credits.

CREATE TABLE orgs (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are shown once and stored as a SHA-256 hash; `prefix` lets people tell keys apart.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs(id),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    label       text NOT NULL DEFAULT '',
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at);

-- One account per organization (its credit balance) and one per system counterpart.
-- debits_posted/credits_posted are updated in the same transaction as each transfer;
-- `transfer_seq` numbers an account's transfers in the order they were booked.
CREATE TABLE accounts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code            text NOT NULL UNIQUE,
    org_id          uuid UNIQUE REFERENCES orgs(id),
    debits_posted   numeric(24,6) NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_posted  numeric(24,6) NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    transfer_seq    bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((org_id IS NULL) = (code NOT LIKE 'org:%'))
);

INSERT INTO accounts (code) VALUES
    ('sales'), ('promotions'), ('usage:ai'), ('usage:infra'), ('refunds'), ('adjustments');

-- Per organization and kind, what moved in and out: the balance endpoint's totals without a
-- scan of the ledger. Kept in the same transaction as the transfers they count.
CREATE TABLE org_kind_totals (
    org_id          uuid NOT NULL REFERENCES orgs(id),
    kind            text NOT NULL,
    debits_posted   numeric(24,6) NOT NULL DEFAULT 0,
    credits_posted  numeric(24,6) NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, kind)
);

-- Every credit movement, once, forever. Corrections are new (reversal) transfers.
CREATE TABLE transfers (
    id                  uuid PRIMARY KEY,               -- UUIDv7: time-ordered
    org_id              uuid NOT NULL REFERENCES orgs(id),
    org_seq             bigint NOT NULL,                -- position in the org's history
    debit_account_id    bigint NOT NULL REFERENCES accounts(id),
    credit_account_id   bigint NOT NULL REFERENCES accounts(id),
    amount              numeric(24,6) NOT NULL CHECK (amount > 0),
    kind                text NOT NULL CHECK (kind IN
                          ('purchase','bonus','topup','usage','refund','adjustment','reversal')),
    balance_after       numeric(24,6) NOT NULL,         -- the org's balance right after it
    idempotency_key     text NOT NULL UNIQUE,
    actor               text NOT NULL,
    reason              text NOT NULL,
    refs                jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (debit_account_id <> credit_account_id),
    UNIQUE (org_id, org_seq)
);
CREATE INDEX transfers_org_kind ON transfers (org_id, kind, org_seq);
CREATE INDEX transfers_org_time ON transfers (org_id, created_at);

-- The ledger is append-only: refuse UPDATE, DELETE and TRUNCATE outright.
CREATE FUNCTION transfers_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'transfers are immutable: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER transfers_no_update_delete BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION transfers_are_immutable();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION transfers_are_immutable();

-- Idempotency of API writes: the first request with a key stores a hash of its body and the
-- result; a repeat with the same body gets the same result, a different body is a conflict.
CREATE TABLE idempotency_keys (
    scope         text NOT NULL,          -- e.g. 'adjustment:{org}'
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    result        jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
