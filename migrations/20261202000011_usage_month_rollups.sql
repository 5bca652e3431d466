-- Per-org monthly usage rollups, kept in the transaction that records the events (only events
-- that stay recorded: not duplicates, not refused at the overdraft floor). Summaries (stored and
-- live) read them instead of scanning usage_events: a month's lines and users, its usage total,
-- and the usage part of its opening balance (every earlier month's rows, a handful per month).
-- The month is the UTC calendar month of occurred_at, as in summaries.
CREATE TABLE usage_month_lines (
    org_id               uuid NOT NULL REFERENCES orgs(id),
    month                date NOT NULL,
    type                 text NOT NULL,
    model                text,
    operation            text,
    resource             text,
    unit                 text,
    events               bigint NOT NULL,
    input_tokens         numeric(38,0),
    output_tokens        numeric(38,0),
    cached_input_tokens  numeric(38,0),
    quantity             numeric(38,6),
    cost                 numeric(28,6) NOT NULL,
    UNIQUE NULLS NOT DISTINCT (org_id, month, type, model, operation, resource, unit)
);

CREATE TABLE usage_month_users (
    org_id   uuid NOT NULL REFERENCES orgs(id),
    month    date NOT NULL,
    user_id  text,
    events   bigint NOT NULL,
    cost     numeric(28,6) NOT NULL,
    UNIQUE NULLS NOT DISTINCT (org_id, month, user_id)
);

INSERT INTO usage_month_lines
SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date, type, model, operation,
       resource, unit, count(*), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
       sum(quantity), sum(cost)
  FROM usage_events
 GROUP BY 1, 2, 3, 4, 5, 6, 7;

INSERT INTO usage_month_users
SELECT org_id, date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date, user_id, count(*),
       sum(cost)
  FROM usage_events
 GROUP BY 1, 2, 3;
