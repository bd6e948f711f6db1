-- Issue 14, item 2: identity, not names (portopt.store schema version 5).
--
-- A portfolio gets an immutable id (uuid), its primary key; its name is unique per owner (UNIQUE NULLS NOT DISTINCT
-- (owner, portfolio)), so creating a name another user holds succeeds and tells nothing about them. holdings,
-- optimizations, reallocations, alerts and backtests reference portfolios(id) ON DELETE CASCADE: deleting a portfolio
-- deletes its rows, and a portfolio created later under the same name (by anyone) starts empty. Row-level security
-- checks ownership through the id.
--
-- Existing rows are attached to the portfolio whose name they carry (names were globally unique until now, so this is
-- unambiguous). Rows naming a portfolio that is not stored (left by a deleted one: the rows a re-created name used to
-- read) are deleted, and their count is recorded in a `runs` row (job `migrate`); a backtest whose config names no
-- stored portfolio is kept, attached to none (only the service role reads it).

-- ------------------------------------------------------------------------- ids, rows attached
ALTER TABLE public.portfolios ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE public.holdings ADD COLUMN portfolio_id uuid;
ALTER TABLE public.optimizations ADD COLUMN portfolio_id uuid;
ALTER TABLE public.reallocations ADD COLUMN portfolio_id uuid;
ALTER TABLE public.backtests ADD COLUMN portfolio_id uuid;
ALTER TABLE public.alerts ADD COLUMN portfolio_id uuid;
UPDATE public.holdings t SET portfolio_id = p.id FROM public.portfolios p WHERE p.portfolio = t.portfolio;
UPDATE public.optimizations t SET portfolio_id = p.id FROM public.portfolios p WHERE p.portfolio = t.portfolio;
UPDATE public.reallocations t SET portfolio_id = p.id FROM public.portfolios p WHERE p.portfolio = t.portfolio;
UPDATE public.alerts t SET portfolio_id = p.id FROM public.portfolios p WHERE p.portfolio = t.portfolio;
UPDATE public.backtests t SET portfolio_id = p.id FROM public.portfolios p WHERE p.portfolio = t.config->>'portfolio';

INSERT INTO public.runs (id, job, trigger, parameters, status, started_at, finished_at)
SELECT 'migration:20261202000000', 'migrate', 'migration',
       jsonb_build_object('version', 5, 'dropped', jsonb_build_object('holdings', h, 'optimizations', o, 'reallocations', r,
                                                                      'alerts', a),
                          'reason', 'rows naming a portfolio that is not stored (a deleted one) are dropped: a re-created '
                                    'name must not see them'),
       'succeeded', now(), now()
  FROM (SELECT (SELECT count(*) FROM public.holdings WHERE portfolio_id IS NULL) AS h,
               (SELECT count(*) FROM public.optimizations WHERE portfolio_id IS NULL AND portfolio IS NOT NULL) AS o,
               (SELECT count(*) FROM public.reallocations WHERE portfolio_id IS NULL) AS r,
               (SELECT count(*) FROM public.alerts WHERE portfolio_id IS NULL AND portfolio IS NOT NULL) AS a) c
 WHERE h + o + r + a > 0;
DELETE FROM public.holdings WHERE portfolio_id IS NULL;
DELETE FROM public.optimizations WHERE portfolio_id IS NULL AND portfolio IS NOT NULL;
DELETE FROM public.reallocations WHERE portfolio_id IS NULL;
DELETE FROM public.alerts WHERE portfolio_id IS NULL AND portfolio IS NOT NULL;

-- ------------------------------------------------------------------------- names out, ids in
DROP POLICY own_all ON public.holdings;
DROP POLICY own_all ON public.optimizations;
DROP POLICY own_all ON public.reallocations;
DROP POLICY own_all ON public.alerts;
DROP POLICY own_all ON public.backtests;
DROP FUNCTION public.owns_portfolio(text);

ALTER TABLE public.holdings DROP COLUMN portfolio;           -- its primary key and foreign key go with it
ALTER TABLE public.optimizations DROP COLUMN portfolio;
ALTER TABLE public.reallocations DROP COLUMN portfolio;
ALTER TABLE public.alerts DROP COLUMN portfolio;
ALTER TABLE public.portfolios DROP CONSTRAINT portfolios_pkey;
ALTER TABLE public.portfolios ADD PRIMARY KEY (id);
ALTER TABLE public.portfolios ADD CONSTRAINT portfolios_owner_portfolio_key UNIQUE NULLS NOT DISTINCT (owner, portfolio);

ALTER TABLE public.holdings ALTER COLUMN portfolio_id SET NOT NULL,
    ADD CONSTRAINT holdings_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES public.portfolios(id) ON DELETE CASCADE,
    ADD PRIMARY KEY (portfolio_id, asset, ts);
ALTER TABLE public.optimizations
    ADD CONSTRAINT optimizations_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES public.portfolios(id) ON DELETE CASCADE;
ALTER TABLE public.reallocations ALTER COLUMN portfolio_id SET NOT NULL,
    ADD CONSTRAINT reallocations_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES public.portfolios(id) ON DELETE CASCADE;
ALTER TABLE public.alerts
    ADD CONSTRAINT alerts_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES public.portfolios(id) ON DELETE CASCADE;
ALTER TABLE public.backtests
    ADD CONSTRAINT backtests_portfolio_id_fkey FOREIGN KEY (portfolio_id) REFERENCES public.portfolios(id) ON DELETE CASCADE;
CREATE INDEX holdings_ts ON public.holdings (portfolio_id, ts);
CREATE INDEX optimizations_portfolio ON public.optimizations (portfolio_id, created_at);
CREATE INDEX reallocations_portfolio ON public.reallocations (portfolio_id, as_of);
CREATE INDEX alerts_portfolio ON public.alerts (portfolio_id);
CREATE INDEX backtests_portfolio ON public.backtests (portfolio_id);

-- The id never changes; a user cannot choose one (so an insert cannot probe another user's id either).
CREATE FUNCTION public.portopt_portfolio_id_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'a portfolio''s id never changes (portfolio %)', quote_literal(OLD.portfolio)
              USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER portfolios_id_immutable BEFORE UPDATE ON public.portfolios
    FOR EACH ROW EXECUTE FUNCTION public.portopt_portfolio_id_immutable();
REVOKE INSERT, UPDATE ON public.portfolios FROM authenticated;
GRANT INSERT (portfolio, owner, quote, wallet, settings), UPDATE (portfolio, owner, quote, wallet, settings)
    ON public.portfolios TO authenticated;

-- ------------------------------------------------------------------------- resolving a name, ownership
-- The id of the portfolio `p` names: an id, or a name among the portfolios the caller sees (invoker's rights: a
-- signed-in user sees their own only, so a name is theirs; the service role sees all, where a name several owners
-- hold must be given by id).
CREATE FUNCTION public.portopt_portfolio_id(p text) RETURNS uuid LANGUAGE plpgsql STABLE AS $$
DECLARE
    ids uuid[];
BEGIN
    IF p ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        SELECT array_agg(id) INTO ids FROM public.portfolios WHERE id = p::uuid;
    END IF;
    IF ids IS NULL THEN
        SELECT array_agg(id ORDER BY id) INTO ids FROM public.portfolios WHERE portfolio = p;
    END IF;
    IF ids IS NULL THEN
        RAISE EXCEPTION 'no portfolio %', quote_literal(p) USING ERRCODE = 'P0002',
              HINT = 'create it first (upsert_portfolio)';
    END IF;
    IF cardinality(ids) > 1 THEN
        RAISE EXCEPTION 'portfolio name % is held by % owners; pass its id (%)', quote_literal(p), cardinality(ids),
              array_to_string(ids, ', ');
    END IF;
    RETURN ids[1];
END $$;
REVOKE EXECUTE ON FUNCTION public.portopt_portfolio_id(text) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.portopt_portfolio_id(text) TO authenticated, service_role;

CREATE FUNCTION public.owns_portfolio(p uuid) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public AS $$
    SELECT EXISTS (SELECT 1 FROM public.portfolios WHERE id = p AND owner = (auth.uid())::text) $$;

CREATE POLICY own_all ON public.holdings FOR ALL TO authenticated
    USING (public.owns_portfolio(portfolio_id)) WITH CHECK (public.owns_portfolio(portfolio_id));
CREATE POLICY own_all ON public.optimizations FOR ALL TO authenticated
    USING (public.owns_portfolio(portfolio_id)) WITH CHECK (public.owns_portfolio(portfolio_id));
CREATE POLICY own_all ON public.reallocations FOR ALL TO authenticated
    USING (public.owns_portfolio(portfolio_id)) WITH CHECK (public.owns_portfolio(portfolio_id));
CREATE POLICY own_all ON public.alerts FOR ALL TO authenticated
    USING (public.owns_portfolio(portfolio_id)) WITH CHECK (public.owns_portfolio(portfolio_id));
CREATE POLICY own_all ON public.backtests FOR ALL TO authenticated
    USING (public.owns_portfolio(portfolio_id)) WITH CHECK (public.owns_portfolio(portfolio_id));

-- ------------------------------------------------------------------------- functions that named portfolios
CREATE OR REPLACE FUNCTION public.portopt_holdings_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE r record;
BEGIN
    FOR r IN SELECT n.portfolio_id, (SELECT p.portfolio FROM public.portfolios p WHERE p.id = n.portfolio_id) AS portfolio,
                    portopt_iso(max(n.ts)) AS ts, jsonb_agg(DISTINCT n.asset ORDER BY n.asset) AS assets
               FROM new_rows n GROUP BY n.portfolio_id LOOP
        PERFORM portopt_emit('holdings', jsonb_build_object('portfolio', r.portfolio, 'portfolio_id', r.portfolio_id,
                                                            'ts', r.ts, 'assets', r.assets));
    END LOOP;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public.portopt_alerts_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    PERFORM portopt_emit('alerts', jsonb_build_object('alert_id', NEW.id, 'kind', NEW.kind, 'portfolio_id', NEW.portfolio_id));
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION public.write_holdings(p_portfolio text, p_ts timestamptz, p_source text, p_units jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE v_id uuid := public.portopt_portfolio_id(p_portfolio); v_total int; v_ins int; v_upd int;
BEGIN
    SELECT count(*) INTO v_total FROM jsonb_object_keys(p_units);
    WITH up AS (
        INSERT INTO public.holdings AS h (portfolio_id, asset, ts, units, source, recorded_at)
        SELECT v_id, key, p_ts, value::text::float8, p_source, now() FROM jsonb_each(p_units)
        ON CONFLICT (portfolio_id, asset, ts) DO UPDATE SET units = excluded.units, source = excluded.source,
            recorded_at = excluded.recorded_at
        WHERE (h.units, h.source) IS DISTINCT FROM (excluded.units, excluded.source)
        RETURNING (xmax = 0) AS ins)
    SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) INTO v_ins, v_upd FROM up;
    RETURN jsonb_build_object('inserted', v_ins, 'updated', v_upd, 'unchanged', v_total - v_ins - v_upd);
END $$;

CREATE OR REPLACE FUNCTION public.calculate_portfolio_statistics(portfolio_id text, as_of timestamptz DEFAULT now())
RETURNS jsonb LANGUAGE sql STABLE AS $$
    WITH pid AS (SELECT public.portopt_portfolio_id($1) AS id),
    snap AS (
        SELECT h.asset, h.units, h.ts FROM public.holdings h, pid
         WHERE h.portfolio_id = pid.id
           AND h.ts = (SELECT max(ts) FROM public.holdings x WHERE x.portfolio_id = pid.id AND x.ts <= $2)),
    priced AS (
        SELECT s.asset, s.units, s.ts,
               (SELECT p.close FROM public.prices p WHERE p.asset = s.asset AND p.ts <= $2
                 ORDER BY p.ts DESC, p.recorded_at DESC LIMIT 1) AS price
          FROM snap s),
    total AS (SELECT sum(units * price) AS v FROM priced WHERE price IS NOT NULL)
    SELECT jsonb_build_object(
        'portfolio', $1, 'portfolio_id', (SELECT id FROM pid), 'as_of', portopt_iso($2),
        'holdings_ts', (SELECT portopt_iso(max(ts)) FROM snap),
        'value', coalesce((SELECT v FROM total), 0),
        'assets', (SELECT count(*) FROM snap),
        'values', coalesce((SELECT jsonb_object_agg(asset, units * price) FROM priced WHERE price IS NOT NULL), '{}'),
        'weights', coalesce((SELECT jsonb_object_agg(asset, units * price / nullif((SELECT v FROM total), 0))
                               FROM priced WHERE price IS NOT NULL), '{}'),
        'missing', coalesce((SELECT jsonb_agg(asset ORDER BY asset) FROM priced WHERE price IS NULL), '[]')) $$;

-- Delete a portfolio (a name or an id) with everything it owns, in one transaction: its rows go by ON DELETE CASCADE.
-- Row-level security applies (invoker's rights): a user deletes only their own. Returns the rows deleted.
CREATE OR REPLACE FUNCTION public.delete_portfolio(p_portfolio text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := public.portopt_portfolio_id(p_portfolio);
    n integer;
    c integer;
BEGIN
    SELECT (SELECT count(*) FROM public.holdings WHERE portfolio_id = v_id)
         + (SELECT count(*) FROM public.optimizations WHERE portfolio_id = v_id)
         + (SELECT count(*) FROM public.reallocations WHERE portfolio_id = v_id)
         + (SELECT count(*) FROM public.alerts WHERE portfolio_id = v_id)
         + (SELECT count(*) FROM public.backtests WHERE portfolio_id = v_id) INTO n;
    DELETE FROM public.portfolios WHERE id = v_id; GET DIAGNOSTICS c = ROW_COUNT;
    IF c = 0 THEN
        RAISE EXCEPTION 'no portfolio %', quote_literal(p_portfolio) USING ERRCODE = 'P0002';
    END IF;
    RETURN n + c;
END $$;
