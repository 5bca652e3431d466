-- The metrics count the holds that expired in the last hour (an operator's sign that a
-- platform stops settling what it holds); expired holds are most of the table in time, so
-- the count reads this index, not the table.
CREATE INDEX holds_expired_recent ON holds (ended_at) WHERE state = 'expired';
