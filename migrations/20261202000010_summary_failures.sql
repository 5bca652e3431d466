-- An org whose month could not be summarised: the rest of its page is stored without it, the
-- failure is kept here (and logged, and counted in metrics), and the org is retried alone
-- through the outbox (topic summary.generate_org) with the dispatcher's backoff until it is
-- stored; then its row is removed.
CREATE TABLE summary_failures (
    org_id      uuid NOT NULL REFERENCES orgs(id),
    month       date NOT NULL,
    error       text NOT NULL,
    failures    int NOT NULL DEFAULT 1,
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, month)
);
