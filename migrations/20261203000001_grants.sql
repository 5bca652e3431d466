-- Credit grants (issue 14): every credit an org holds belongs to exactly one grant; every
-- transfer lists the grants it moved (`transfers.grants`, signed from each grant's side, a
-- null grant_id being the org's overdraft). Expired credits go to the `breakage` account.

ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check CHECK (kind IN
    ('purchase','bonus','topup','usage','refund','adjustment','reversal','promo','expiry'));
ALTER TABLE transfers ADD COLUMN grants jsonb NOT NULL DEFAULT '[]'::jsonb;

INSERT INTO accounts (code) VALUES ('breakage');

CREATE TABLE grants (
    id                          uuid PRIMARY KEY,          -- the transfer that made it
    org_id                      uuid NOT NULL REFERENCES orgs(id),
    source                      text NOT NULL
        CHECK (source IN ('purchase','bonus','topup','promo','adjustment')),
    category                    text NOT NULL CHECK (category IN ('paid','promotional')),
    purchase_id                 uuid,
    topup_id                    uuid,
    parent_grant_id             uuid REFERENCES grants(id),
    amount                      numeric(28,6) NOT NULL CHECK (amount > 0),
    remaining                   numeric(28,6) NOT NULL CHECK (remaining >= 0),
    consumed                    numeric(28,6) NOT NULL DEFAULT 0 CHECK (consumed >= 0),
    expired                     numeric(28,6) NOT NULL DEFAULT 0 CHECK (expired >= 0),
    refunded                    numeric(28,6) NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    cost_basis_minor_per_credit numeric(30,12) NOT NULL DEFAULT 0
        CHECK (cost_basis_minor_per_credit >= 0),
    priority                    smallint NOT NULL DEFAULT 50 CHECK (priority BETWEEN 0 AND 100),
    effective_at                timestamptz NOT NULL,
    expires_at                  timestamptz,
    applies_to                  jsonb,
    reason                      text NOT NULL DEFAULT '',
    created_at                  timestamptz NOT NULL DEFAULT now(),
    CHECK (remaining = amount - consumed - expired - refunded)
);
-- Booking loads an org's grants with credits left; reads sum the due ones.
CREATE INDEX grants_org_active ON grants (org_id) WHERE remaining > 0;
-- The sweep finds what is due.
CREATE INDEX grants_expiry_due ON grants (expires_at) WHERE remaining > 0 AND expires_at IS NOT NULL;
CREATE INDEX grants_org_list ON grants (org_id, id);
CREATE INDEX grants_payment ON grants (purchase_id) WHERE purchase_id IS NOT NULL;
CREATE INDEX grants_topup ON grants (topup_id) WHERE topup_id IS NOT NULL;

-- Orgs whose balance predates grants: `creditflow migrate` replays their history into grants
-- (store::grants::backfill) and removes them from here.
CREATE TABLE grant_backfill (org_id uuid PRIMARY KEY REFERENCES orgs(id));
INSERT INTO grant_backfill SELECT org_id FROM accounts WHERE org_id IS NOT NULL AND transfer_seq > 0;

-- Packages may expire their credits.
ALTER TABLE credit_packages
    ADD COLUMN expires_after_days integer CHECK (expires_after_days BETWEEN 1 AND 3650),
    ADD COLUMN bonus_expires_after_days integer CHECK (bonus_expires_after_days BETWEEN 1 AND 3650);

-- Summaries count promotional grants and expired credits.
ALTER TABLE monthly_summaries
    ADD COLUMN promo numeric(28,6) NOT NULL DEFAULT 0,
    ADD COLUMN expired numeric(28,6) NOT NULL DEFAULT 0;
ALTER TABLE monthly_summaries DROP CONSTRAINT monthly_summaries_check;
ALTER TABLE monthly_summaries ADD CONSTRAINT monthly_summaries_check CHECK
    (closing = opening + purchased + bonus + topup - refunded + adjusted + reversed + promo
               - expired - used);
