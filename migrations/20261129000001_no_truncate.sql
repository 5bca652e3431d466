-- Price versions and stored monthly summaries already refuse UPDATE and DELETE row by row;
-- TRUNCATE skips row triggers, so refuse it with statement triggers too (as on transfers).
CREATE TRIGGER price_versions_no_truncate BEFORE TRUNCATE ON price_versions
    FOR EACH STATEMENT EXECUTE FUNCTION prices_are_immutable();
CREATE TRIGGER ai_model_prices_no_truncate BEFORE TRUNCATE ON ai_model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION prices_are_immutable();
CREATE TRIGGER infra_prices_no_truncate BEFORE TRUNCATE ON infra_prices
    FOR EACH STATEMENT EXECUTE FUNCTION prices_are_immutable();
CREATE TRIGGER monthly_summaries_no_truncate BEFORE TRUNCATE ON monthly_summaries
    FOR EACH STATEMENT EXECUTE FUNCTION prices_are_immutable();
