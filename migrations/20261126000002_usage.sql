-- Usage metering: a versioned price book, usage events, thresholds and the outbox.

-- A price version is a complete price book, effective from a point in time until the next
-- version's start. Versions are never edited; a change is a new version.
CREATE TABLE price_versions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the version number
    effective_from  timestamptz NOT NULL UNIQUE,
    note            text NOT NULL DEFAULT '',
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- AI tokens, in credits per million tokens, per token class.
CREATE TABLE ai_model_prices (
    version_id              bigint NOT NULL REFERENCES price_versions(id),
    model                   text NOT NULL,
    input_per_mtok          numeric(24,6) NOT NULL CHECK (input_per_mtok >= 0),
    output_per_mtok         numeric(24,6) NOT NULL CHECK (output_per_mtok >= 0),
    cached_input_per_mtok   numeric(24,6) NOT NULL CHECK (cached_input_per_mtok >= 0),
    PRIMARY KEY (version_id, model)
);

-- Infrastructure, in credits per unit (data operations: per 1,000 operations).
CREATE TABLE infra_prices (
    version_id      bigint NOT NULL REFERENCES price_versions(id),
    resource        text NOT NULL
                      CHECK (resource IN ('compute','memory','storage','bandwidth','data_operations')),
    unit            text NOT NULL,
    price_per_unit  numeric(24,9) NOT NULL CHECK (price_per_unit >= 0),
    PRIMARY KEY (version_id, resource)
);

CREATE FUNCTION prices_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'price versions are immutable: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER price_versions_immutable BEFORE UPDATE OR DELETE ON price_versions
    FOR EACH ROW EXECUTE FUNCTION prices_are_immutable();
CREATE TRIGGER ai_model_prices_immutable BEFORE UPDATE OR DELETE ON ai_model_prices
    FOR EACH ROW EXECUTE FUNCTION prices_are_immutable();
CREATE TRIGGER infra_prices_immutable BEFORE UPDATE OR DELETE ON infra_prices
    FOR EACH ROW EXECUTE FUNCTION prices_are_immutable();

-- The starter price book (1 credit = 1 US cent of list price).
INSERT INTO price_versions (effective_from, note, created_by)
VALUES ('2020-01-01T00:00:00Z', 'starter price book', 'migration');
INSERT INTO ai_model_prices (version_id, model, input_per_mtok, output_per_mtok, cached_input_per_mtok) VALUES
    (1, 'gpt-4o',            250,   1000,  125),
    (1, 'gpt-4o-mini',        15,     60,    7.5),
    (1, 'o3-mini',           110,    440,   55),
    (1, 'claude-sonnet-4',   300,   1500,   30),
    (1, 'claude-haiku-3.5',   80,    400,    8),
    (1, 'gemini-2.0-flash',   10,     40,    2.5),
    (1, 'llama-3.1-70b',      88,     88,   88),
    (1, 'mistral-large',     200,    600,  200);
INSERT INTO infra_prices (version_id, resource, unit, price_per_unit) VALUES
    (1, 'compute',         'vcpu_seconds', 0.0012),
    (1, 'memory',          'gb_seconds',   0.00015),
    (1, 'storage',         'gb_hours',     0.003),
    (1, 'bandwidth',       'gb',           9),
    (1, 'data_operations', 'operations',   0.04);

-- Every accepted usage event, with all its dimensions (for summaries) and what it cost.
-- `event_id` is the client's id, unique per org: the same event sent again is a duplicate.
-- No foreign keys on this hot table: the org is checked by the ledger lock in the same
-- transaction, and transfer_id points at the transfer booked beside it (NULL when the cost
-- rounds to zero, since a transfer moves a positive amount).
CREATE TABLE usage_events (
    id                    uuid PRIMARY KEY,               -- ours, UUIDv7
    org_id                uuid NOT NULL,
    event_id              text NOT NULL,
    payload_hash          bytea NOT NULL,
    type                  text NOT NULL CHECK (type IN ('ai_tokens','infra')),
    occurred_at           timestamptz NOT NULL,
    user_id               text,
    model                 text,
    operation             text,
    input_tokens          bigint,
    output_tokens         bigint,
    cached_input_tokens   bigint,
    resource              text,
    quantity              numeric(24,6),
    unit                  text,
    labels                jsonb NOT NULL DEFAULT '{}'::jsonb,
    cost                  numeric(24,6) NOT NULL CHECK (cost >= 0),
    price_version         bigint NOT NULL,
    transfer_id           uuid,
    received_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, event_id)
);
CREATE INDEX usage_events_org_time ON usage_events (org_id, occurred_at);

-- Balance thresholds per org: the auto-topup threshold and alert thresholds. A debit that takes
-- the balance from at-or-above a threshold to below it writes an outbox row.
CREATE TABLE org_thresholds (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES orgs(id),
    purpose     text NOT NULL CHECK (purpose IN ('auto_topup','alert')),
    threshold   numeric(24,6) NOT NULL CHECK (threshold >= 0),
    UNIQUE (org_id, purpose, threshold)
);

-- The transactional outbox: written in the same transaction as the change it announces, turned
-- into workflow starts or signals by the worker's dispatcher, then marked dispatched.
CREATE TABLE outbox (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id         uuid NOT NULL,
    topic          text NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    dispatched_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE dispatched_at IS NULL;
