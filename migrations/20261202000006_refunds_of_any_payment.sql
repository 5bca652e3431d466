-- A refund is of one of our payments: a purchase or an auto-topup charge (audit L10: topup
-- charges could not be refunded at all). It names the processor payment it refunds, and a refund
-- made at the processor (its dashboard) is recorded once by the processor's refund id.
ALTER TABLE refunds ALTER COLUMN purchase_id DROP NOT NULL;
ALTER TABLE refunds ADD COLUMN topup_id uuid REFERENCES topups(id);
ALTER TABLE refunds ADD COLUMN payment_intent_id text;
UPDATE refunds r SET payment_intent_id = NULLIF(p.payment_intent_id, '')
  FROM purchases p WHERE p.id = r.purchase_id;
ALTER TABLE refunds ADD CONSTRAINT refunds_of_one_payment
    CHECK ((purchase_id IS NULL) <> (topup_id IS NULL));
CREATE UNIQUE INDEX refunds_topup_key ON refunds (topup_id, idempotency_key)
    WHERE topup_id IS NOT NULL;
CREATE INDEX refunds_topup ON refunds (topup_id) WHERE topup_id IS NOT NULL;
CREATE UNIQUE INDEX refunds_processor_refund ON refunds (stripe_refund_id)
    WHERE stripe_refund_id IS NOT NULL;
-- Events name a processor payment (charge.refunded, disputes): find ours by it.
CREATE INDEX purchases_payment_intent ON purchases (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;
CREATE INDEX topup_attempts_payment_intent ON topup_attempts (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;
