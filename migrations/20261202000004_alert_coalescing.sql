-- Alerts are claimed before their e-mail (`sending`), and a repeat within the org's window is
-- recorded `suppressed` without a mail (audit L6: alert storms).
ALTER TABLE alerts DROP CONSTRAINT alerts_state_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_state_check
    CHECK (state IN ('sending','sent','unknown','failed','suppressed'));
CREATE INDEX alerts_org_recent ON alerts (org_id, sent_at);
