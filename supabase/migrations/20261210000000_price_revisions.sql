-- What was known when (issue 15): a price that changes keeps its superseded version in price_revisions, with when
-- it was recorded and when it was superseded, and get_historical_data(as_of => t) answers with what was known at t:
-- each observation stamped at or before t in the version recorded at or before t (a later revision is not seen),
-- or, for history first recorded after t (loaded later), its first recorded version. The same rule as
-- SQLiteStore.read_prices (portopt.store, schema version 7).

CREATE TABLE public.price_revisions (
    asset text NOT NULL, ts timestamptz NOT NULL, source text NOT NULL,
    open double precision, high double precision, low double precision, close double precision NOT NULL,
    volume double precision, market_cap double precision,
    recorded_at timestamptz NOT NULL, superseded_at timestamptz NOT NULL,
    PRIMARY KEY (asset, ts, source, recorded_at));

CREATE FUNCTION public.portopt_price_revised() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.open, OLD.high, OLD.low, OLD.close, OLD.volume, OLD.market_cap)
       IS DISTINCT FROM (NEW.open, NEW.high, NEW.low, NEW.close, NEW.volume, NEW.market_cap) THEN
        INSERT INTO public.price_revisions AS r
        VALUES (OLD.asset, OLD.ts, OLD.source, OLD.open, OLD.high, OLD.low, OLD.close, OLD.volume, OLD.market_cap,
                OLD.recorded_at, NEW.recorded_at)
        ON CONFLICT (asset, ts, source, recorded_at) DO UPDATE
            SET open = excluded.open, high = excluded.high, low = excluded.low, close = excluded.close,
                volume = excluded.volume, market_cap = excluded.market_cap, superseded_at = excluded.superseded_at;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER prices_revised BEFORE UPDATE ON public.prices
    FOR EACH ROW EXECUTE FUNCTION public.portopt_price_revised();

-- Market data: read by signed-in users, written by the service role only (as prices).
ALTER TABLE public.price_revisions ENABLE ROW LEVEL SECURITY;
CREATE POLICY market_read ON public.price_revisions FOR SELECT TO authenticated USING (true);
GRANT ALL ON public.price_revisions TO service_role;
GRANT SELECT ON public.price_revisions TO authenticated, anon;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON public.price_revisions FROM anon, authenticated;
REVOKE EXECUTE ON FUNCTION public.portopt_price_revised() FROM PUBLIC, anon, authenticated;

-- Without as_of: the query of before (the latest version of every observation); with it, the versions known then. Each
-- branch is gated by a condition on as_of alone, which PostgreSQL evaluates once: only one branch runs.
CREATE OR REPLACE FUNCTION public.get_historical_data(assets text[] DEFAULT NULL, start timestamptz DEFAULT NULL,
                                                      "end" timestamptz DEFAULT NULL, as_of timestamptz DEFAULT NULL,
                                                      source text DEFAULT NULL)
RETURNS TABLE (ts timestamptz, asset text, source text, open float8, high float8, low float8, close float8,
               volume float8, market_cap float8)
LANGUAGE sql STABLE AS $$
    WITH latest AS (
        SELECT p.*, row_number() OVER (PARTITION BY p.asset, p.ts ORDER BY p.recorded_at DESC, p.source) AS k
          FROM public.prices p
         WHERE $4 IS NULL AND ($1 IS NULL OR p.asset = ANY ($1)) AND ($2 IS NULL OR p.ts >= $2)
           AND ($3 IS NULL OR p.ts <= $3) AND ($5 IS NULL OR p.source = $5)),
    versions AS (
        SELECT p.asset, p.ts, p.source, p.open, p.high, p.low, p.close, p.volume, p.market_cap, p.recorded_at
          FROM public.prices p
         WHERE $4 IS NOT NULL AND ($1 IS NULL OR p.asset = ANY ($1)) AND ($2 IS NULL OR p.ts >= $2)
           AND ($3 IS NULL OR p.ts <= $3) AND p.ts <= $4 AND ($5 IS NULL OR p.source = $5)
        UNION ALL
        SELECT r.asset, r.ts, r.source, r.open, r.high, r.low, r.close, r.volume, r.market_cap, r.recorded_at
          FROM public.price_revisions r
         WHERE $4 IS NOT NULL AND ($1 IS NULL OR r.asset = ANY ($1)) AND ($2 IS NULL OR r.ts >= $2)
           AND ($3 IS NULL OR r.ts <= $3) AND r.ts <= $4 AND ($5 IS NULL OR r.source = $5)),
    known AS (   -- per observation and source: the version known at as_of, else the first recorded one
        SELECT v.*, row_number() OVER (PARTITION BY v.asset, v.ts, v.source
                                       ORDER BY (v.recorded_at <= $4) DESC,
                                                CASE WHEN v.recorded_at <= $4 THEN v.recorded_at END DESC NULLS LAST,
                                                v.recorded_at) AS kv
          FROM versions v),
    chosen AS (
        SELECT k.*, row_number() OVER (PARTITION BY k.asset, k.ts ORDER BY k.recorded_at DESC, k.source) AS kk
          FROM known k WHERE k.kv = 1)
    SELECT l.ts, l.asset, l.source, l.open, l.high, l.low, l.close, l.volume, l.market_cap FROM latest l WHERE l.k = 1
    UNION ALL
    SELECT c.ts, c.asset, c.source, c.open, c.high, c.low, c.close, c.volume, c.market_cap FROM chosen c WHERE c.kk = 1
    ORDER BY 1, 2 $$;
