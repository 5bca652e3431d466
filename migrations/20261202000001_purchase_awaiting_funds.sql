-- A checkout completed with a payment that settles later (bank debits) waits in
-- `awaiting_funds`: nothing is granted until the processor reports the money received.
ALTER TABLE purchases DROP CONSTRAINT purchases_state_check;
ALTER TABLE purchases ADD CONSTRAINT purchases_state_check
    CHECK (state IN ('awaiting_payment','awaiting_funds','paid','credited','expired','failed'));
