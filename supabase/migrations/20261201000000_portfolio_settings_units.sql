-- Issue 14, items 1 and 4: settings validated in the database, a per-owner limit of portfolios, and units of work.
--
-- 1. portfolios.settings is checked by the same rules as portopt.portfolio.PortfolioSettings (nbs/00a_portfolio):
--    a REST insert or update of bad settings is refused (SQLSTATE 23514) with one line naming the field and the fix.
-- 2. At most portopt_max_portfolios() portfolios per owner (50; replace the function to change it).
-- 3. runs rows can be units of work (the listener's (event, portfolio) pairs): `unit` is unique, a claim takes a lease,
--    so a unit has one row whatever happens (two listeners, a killed listener, a database restart).

CREATE FUNCTION public.portopt_settings_error(s jsonb) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v jsonb;
    r jsonb;
    known text[] := ARRAY['strategy', 'strategy_params', 'assets', 'window', 'periods_per_year', 'missing', 'max_fill',
                          'source', 'band', 'cash',
                          'stale_after_hours', 'max_drawdown', 'utilization_cap', 'liquidity_floor', 'reallocation'];
    known_r text[] := ARRAY['fee_bps', 'min_trade_value', 'participation', 'impact_coefficient', 'decimals',
                            'drawdown_limit', 'band', 'cash', 'max_price_age'];  -- the last three: settings of before
BEGIN
    IF s IS NULL OR jsonb_typeof(s) <> 'object' THEN
        RETURN 'settings: must be a JSON object';
    END IF;
    FOR k IN SELECT jsonb_object_keys(s) LOOP
        IF NOT k = ANY (known) THEN
            RETURN format('%s: unknown setting; known: %s', k, array_to_string(known, ', '));
        END IF;
    END LOOP;
    v := s->'strategy';
    IF v IS NOT NULL AND (jsonb_typeof(v) <> 'string' OR btrim(v #>> '{}') = '') THEN
        RETURN format('strategy: give a strategy name, e.g. min_variance (got %s)', v);
    END IF;
    v := s->'strategy_params';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'object' THEN
        RETURN format('strategy_params: must be an object (got %s)', v);
    END IF;
    v := s->'assets';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' THEN
        IF jsonb_typeof(v) <> 'array' OR EXISTS (SELECT 1 FROM jsonb_array_elements(v) e
                                                  WHERE jsonb_typeof(e) <> 'string' OR btrim(e #>> '{}') = '') THEN
            RETURN format('assets: must be a list of asset names (got %s)', v);
        END IF;
        IF (SELECT count(*) <> count(DISTINCT e) FROM jsonb_array_elements_text(v) e) THEN
            RETURN format('assets: an asset is listed more than once (got %s)', v);
        END IF;
    END IF;
    v := s->'window';
    IF v IS NOT NULL AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric <> trunc((v::text)::numeric)
                          OR (v::text)::numeric < 2) THEN
        RETURN format('window: must be a whole number of periods >= 2 (got %s)', v);
    END IF;
    v := s->'periods_per_year';  -- null: inferred from the prices' spacing
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric <> trunc((v::text)::numeric)
                          OR (v::text)::numeric <= 0) THEN
        RETURN format('periods_per_year: must be a whole number > 0, e.g. 365 or 252 (got %s)', v);
    END IF;
    v := s->'missing';
    IF v IS NOT NULL AND (jsonb_typeof(v) <> 'string' OR NOT (v #>> '{}') = ANY (ARRAY['exclude', 'ffill', 'raise'])) THEN
        RETURN format('missing: use exclude, ffill or raise (got %s)', v);
    END IF;
    v := s->'max_fill';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' AND (jsonb_typeof(v) <> 'number'
                                                         OR (v::text)::numeric <> trunc((v::text)::numeric) OR (v::text)::numeric < 1) THEN
        RETURN format('max_fill: must be a whole number of periods >= 1, or null (got %s)', v);
    END IF;
    FOREACH k IN ARRAY ARRAY['source', 'cash'] LOOP
        v := s->k;
        IF v IS NOT NULL AND jsonb_typeof(v) NOT IN ('string', 'null') OR (k = 'cash' AND jsonb_typeof(v) = 'null') THEN
            RETURN format('%s: must be a name (got %s)', k, v);
        END IF;
    END LOOP;
    v := s->'band';
    IF v IS NOT NULL AND (jsonb_typeof(v) <> 'array' OR jsonb_array_length(v) <> 2
                          OR jsonb_typeof(v->0) <> 'number' OR jsonb_typeof(v->1) <> 'number'
                          OR NOT ((v->>0)::numeric > 0 AND (v->>0)::numeric < 1 AND (v->>1)::numeric > 1)) THEN
        RETURN format('band: use (low, high) with 0 < low < 1 < high, e.g. [0.95, 1.05] (got %s)', v);
    END IF;
    v := s->'stale_after_hours';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric <= 0) THEN
        RETURN format('stale_after_hours: must be a number of hours > 0, or null (got %s)', v);
    END IF;
    FOREACH k IN ARRAY ARRAY['max_drawdown', 'utilization_cap'] LOOP
        v := s->k;
        IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric <= 0
                                                             OR (v::text)::numeric > 1) THEN
            RETURN format('%s: must be a fraction in (0, 1], or null (got %s)', k, v);
        END IF;
    END LOOP;
    v := s->'liquidity_floor';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric < 0) THEN
        RETURN format('liquidity_floor: must be a number >= 0, or null (got %s)', v);
    END IF;
    r := s->'reallocation';
    IF r IS NULL OR jsonb_typeof(r) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(r) <> 'object' THEN
        RETURN format('reallocation: must be an object (got %s)', r);
    END IF;
    FOR k IN SELECT jsonb_object_keys(r) LOOP
        IF NOT k = ANY (known_r) THEN
            RETURN format('reallocation.%s: unknown setting; known: %s', k, array_to_string(known_r, ', '));
        END IF;
    END LOOP;
    FOREACH k IN ARRAY ARRAY['fee_bps', 'min_trade_value', 'impact_coefficient'] LOOP
        v := r->k;
        IF v IS NOT NULL AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric < 0) THEN
            RETURN format('reallocation.%s: must be a number >= 0 (got %s)', k, v);
        END IF;
    END LOOP;
    v := r->'participation';
    IF v IS NOT NULL AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric <= 0 OR (v::text)::numeric > 1) THEN
        RETURN format('reallocation.participation: must be a fraction in (0, 1] (got %s)', v);
    END IF;
    v := r->'drawdown_limit';
    IF v IS NOT NULL AND jsonb_typeof(v) <> 'null' AND (jsonb_typeof(v) <> 'number' OR (v::text)::numeric <= 0
                                                         OR (v::text)::numeric > 1) THEN
        RETURN format('reallocation.drawdown_limit: must be a fraction in (0, 1], or null (got %s)', v);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION public.portopt_max_portfolios() RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 50 $$;

CREATE FUNCTION public.portopt_check_portfolio() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public AS $$
DECLARE
    err text := public.portopt_settings_error(NEW.settings);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION 'portfolio % settings: %', quote_literal(NEW.portfolio), err USING ERRCODE = 'check_violation',
              HINT = 'see PortfolioSettings in portopt.portfolio for every setting and its default';
    END IF;
    IF TG_OP = 'INSERT' AND NEW.owner IS NOT NULL AND (SELECT count(*) FROM public.portfolios WHERE owner = NEW.owner)
                                                      >= public.portopt_max_portfolios() THEN
        RAISE EXCEPTION 'owner % already has % portfolios, the limit; delete one first', NEW.owner,
              public.portopt_max_portfolios() USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER portfolios_check BEFORE INSERT OR UPDATE ON public.portfolios
    FOR EACH ROW EXECUTE FUNCTION public.portopt_check_portfolio();

-- Delete a portfolio with everything it owns, in one transaction; row-level security applies (invoker's rights).
CREATE FUNCTION public.delete_portfolio(p_portfolio text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer := 0;
    c integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.portfolios WHERE portfolio = p_portfolio) THEN
        RAISE EXCEPTION 'no portfolio %', quote_literal(p_portfolio) USING ERRCODE = 'P0002';
    END IF;
    DELETE FROM public.holdings WHERE portfolio = p_portfolio; GET DIAGNOSTICS c = ROW_COUNT; n := n + c;
    DELETE FROM public.optimizations WHERE portfolio = p_portfolio; GET DIAGNOSTICS c = ROW_COUNT; n := n + c;
    DELETE FROM public.reallocations WHERE portfolio = p_portfolio; GET DIAGNOSTICS c = ROW_COUNT; n := n + c;
    DELETE FROM public.alerts WHERE portfolio = p_portfolio; GET DIAGNOSTICS c = ROW_COUNT; n := n + c;
    DELETE FROM public.backtests WHERE config->>'portfolio' = p_portfolio; GET DIAGNOSTICS c = ROW_COUNT; n := n + c;
    DELETE FROM public.portfolios WHERE portfolio = p_portfolio; GET DIAGNOSTICS c = ROW_COUNT;
    RETURN n + c;
END $$;
REVOKE EXECUTE ON FUNCTION public.delete_portfolio(text) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.delete_portfolio(text) TO authenticated, service_role;

-- Units of work: one runs row per unit, claimed with a lease in one statement.
ALTER TABLE public.runs ADD COLUMN unit text UNIQUE, ADD COLUMN lease_until timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0;

CREATE FUNCTION public.claim_unit(p_unit text, p_id text, p_job text, p_trigger text, p_parameters jsonb,
                                  p_lease_seconds double precision, p_retry_failed boolean) RETURNS text
LANGUAGE sql AS $$
    INSERT INTO public.runs AS r (id, job, trigger, parameters, status, started_at, unit, lease_until, attempts)
    VALUES (p_id, p_job, p_trigger, p_parameters, 'running', clock_timestamp(), p_unit,
            clock_timestamp() + make_interval(secs => p_lease_seconds), 1)
    ON CONFLICT (unit) DO UPDATE SET status = 'running', started_at = excluded.started_at, finished_at = NULL,
        error = NULL, lease_until = excluded.lease_until, attempts = r.attempts + 1
    WHERE (r.status = 'failed' AND p_retry_failed) OR (r.status = 'running' AND r.lease_until < clock_timestamp())
    RETURNING id $$;
REVOKE EXECUTE ON FUNCTION public.claim_unit(text, text, text, text, jsonb, double precision, boolean) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.claim_unit(text, text, text, text, jsonb, double precision, boolean) TO service_role;
