-- Monthly usage summaries: one immutable row per (org, month, revision). A regeneration that
-- finds different figures (late usage events) stores the next revision and keeps the old.
CREATE TABLE monthly_summaries (
    org_id        uuid NOT NULL REFERENCES orgs(id),
    month         date NOT NULL CHECK (extract(day FROM month) = 1),
    revision      int NOT NULL CHECK (revision >= 1),
    opening       numeric(24,6) NOT NULL,
    purchased     numeric(24,6) NOT NULL,
    bonus         numeric(24,6) NOT NULL,
    topup         numeric(24,6) NOT NULL,
    refunded      numeric(24,6) NOT NULL,
    adjusted      numeric(24,6) NOT NULL,
    reversed      numeric(24,6) NOT NULL,
    used          numeric(24,6) NOT NULL,
    closing       numeric(24,6) NOT NULL,
    lines         jsonb NOT NULL,
    users         jsonb NOT NULL,
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, month, revision),
    CHECK (closing = opening + purchased + bonus + topup - refunded + adjusted + reversed - used)
);
CREATE INDEX monthly_summaries_month ON monthly_summaries (month, org_id);

CREATE TRIGGER monthly_summaries_immutable BEFORE UPDATE OR DELETE ON monthly_summaries
    FOR EACH ROW EXECUTE FUNCTION prices_are_immutable();
