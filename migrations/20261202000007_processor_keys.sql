-- Stripe saves the answer to an Idempotency-Key once its endpoint ran, a 500 too, and replays it
-- for 24 hours: a key that got a 5xx answer can only get that 5xx again. Per operation (the
-- key's base), the generation of the key in use and whether it got a 5xx answer: the next try
-- then looks for what the call may have made before it moves to a fresh key.
CREATE TABLE processor_keys (
    base          text PRIMARY KEY,
    generation    integer NOT NULL DEFAULT 0,
    server_error  boolean NOT NULL DEFAULT false,
    detail        text,
    -- When the current generation's key was first sent: Stripe prunes keys after 24 hours.
    first_used_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
