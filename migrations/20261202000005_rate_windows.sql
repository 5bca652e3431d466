-- Requests per org and action in fixed one-minute windows (audit L13: purchases and card setups
-- each create a processor session and a workflow; one tenant must not use up the processor's
-- rate limit for everyone). Shared by every API process.
CREATE TABLE rate_windows (
    org_id        uuid NOT NULL,
    action        text NOT NULL,
    window_start  timestamptz NOT NULL,
    count         integer NOT NULL,
    PRIMARY KEY (org_id, action, window_start)
);
