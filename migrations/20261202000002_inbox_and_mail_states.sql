-- Payment-processor events are an inbox: the webhook verifies an event and stores it (answered
-- 200 at once), and the worker's dispatcher hands it to the workflow it concerns, retrying
-- while Temporal is unreachable. An event id is stored once, whatever the deliveries.
ALTER TABLE stripe_events
    ADD COLUMN payload          jsonb,
    ADD COLUMN dispatched_at    timestamptz,
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_error       text;
-- Events of round 1 were handled when received.
UPDATE stripe_events SET dispatched_at = received_at;
CREATE INDEX stripe_events_pending ON stripe_events (next_attempt_at) WHERE dispatched_at IS NULL;

-- An outbox row that cannot be dispatched yet (an auto-topup while another runs, Temporal
-- unreachable) waits until `available_at` instead of blocking the rows behind it.
ALTER TABLE outbox
    ADD COLUMN available_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN attempts      integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error    text;

-- E-mail at most once: `sending` is written before the message is handed to SMTP, so a crash in
-- that window is found by the retry and recorded `unknown` (never resent blindly); `failed`
-- holds why a message could not be sent (an address the mail library refuses, a permanent SMTP
-- refusal, or SMTP unreachable for every attempt).
ALTER TABLE email_sends
    ADD COLUMN state         text NOT NULL DEFAULT 'pending'
                             CHECK (state IN ('pending','sending','sent','unknown','failed')),
    ADD COLUMN attempted_at  timestamptz,
    ADD COLUMN detail        text;
UPDATE email_sends SET state = 'sent' WHERE sent_at IS NOT NULL;

-- An alert is recorded whatever became of its e-mail.
ALTER TABLE alerts
    ADD COLUMN state   text NOT NULL DEFAULT 'sent'
                       CHECK (state IN ('sent','unknown','failed')),
    ADD COLUMN detail  text;

-- An off-session charge may settle later (`processing`: bank debits) or need the customer
-- (`requires_action`); only `succeeded` grants. A processing attempt is updated when it settles.
ALTER TABLE topup_attempts DROP CONSTRAINT topup_attempts_outcome_check;
ALTER TABLE topup_attempts ADD CONSTRAINT topup_attempts_outcome_check
    CHECK (outcome IN ('succeeded','soft_decline','hard_decline','processing','requires_action'));
