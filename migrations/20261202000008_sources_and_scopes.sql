-- Usage events carry a source (CloudEvents' own `source`; for JSON events the reporting key's
-- source or `default`), and dedupe is per (org, source, id): two collectors' events with the
-- same id are two events.
--
-- Rows recorded before this migration were deduplicated by id alone and their source was not
-- kept: they get the empty source, which no new event can have, and an incoming event whose id
-- matches one of them (from any source) is still its duplicate. So a retry that spans the
-- upgrade never counts twice.
ALTER TABLE usage_events ADD COLUMN source text NOT NULL DEFAULT '';
ALTER TABLE usage_events ALTER COLUMN source SET DEFAULT 'default';
ALTER TABLE usage_events ADD CONSTRAINT usage_events_org_source_event UNIQUE (org_id, source, event_id);
ALTER TABLE usage_events DROP CONSTRAINT usage_events_org_id_event_id_key;

-- What a key may do, and (for usage) which sources it may report for. Existing keys keep every
-- scope and every source.
ALTER TABLE api_keys
    ADD COLUMN scopes text[] NOT NULL
        DEFAULT '{usage:write,balance:read,history:read,billing:manage,keys:manage}',
    ADD COLUMN sources text[];
COMMENT ON COLUMN api_keys.sources IS 'NULL: any source; else the only sources the key may report usage for (the first is its default)';

-- The rows from before sources, by id: empty on a database that started with sources, and it
-- never grows (no new row has the empty source).
CREATE INDEX usage_events_before_sources ON usage_events (org_id, event_id) WHERE source = '';
