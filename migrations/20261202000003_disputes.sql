-- A disputed payment (a chargeback): what is still unspent of its credits is clawed back at
-- once (never taking the balance below zero), auto-topup is paused, and the outcome recorded.
CREATE TABLE disputes (
    id                 text PRIMARY KEY,
    org_id             uuid NOT NULL REFERENCES orgs(id),
    purchase_id        uuid,
    topup_id           uuid,
    payment_intent_id  text NOT NULL,
    amount_minor       bigint NOT NULL,
    currency           text NOT NULL,
    reason             text NOT NULL,
    status             text NOT NULL,
    clawed_back        numeric(24,6) NOT NULL CHECK (clawed_back >= 0),
    outcome            text CHECK (outcome IN ('won','lost')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    closed_at          timestamptz
);
CREATE INDEX disputes_org ON disputes (org_id, created_at);
