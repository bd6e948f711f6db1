-- Requests from client applications (issue 16; portopt.store schema version 8): a client holding the anon key and its
-- user's session inserts a row in `requests` through PostgREST; a trigger writes the outbox event; the listener
-- claims it exactly once (claim_unit, unit 'request:<id>', with a lease), runs it with the code the CLI uses, and
-- writes status, result (the CLI's --json shape), report and error back in the same transaction as its run's close
-- (complete_unit, below: a pending write of kind 'request').
--
-- What the database checks (cheap and structural; the listener validates the parameters fully with the CLI's own
-- models and marks a bad request `rejected` with a one-line reason): the kind, that the parameters are a JSON object,
-- that a named portfolio is its owner's, the owner's quotas (request_quotas), an idempotency key unique per owner
-- (submit_request returns the first request for a repeated key).
--
-- Row-level security: a user inserts and reads only their own requests and may only cancel one that is queued or
-- running (column privileges: a user writes kind, parameters and idempotency_key at insert, status at update; never
-- result, report, error, owner or the timestamps); anon sees nothing; only the service role claims and completes.

CREATE TABLE public.requests (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner text NOT NULL DEFAULT (auth.uid())::text,
    kind text NOT NULL CHECK (kind IN ('optimize', 'backtest', 'reallocate', 'sweep', 'report')),
    parameters jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(parameters) = 'object'),
    idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    portfolio_id uuid REFERENCES public.portfolios(id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'rejected', 'cancelled')),
    result jsonb,
    report jsonb,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    duration double precision,   -- seconds from started_at (or created_at, for a request that never started) to finished_at
    CONSTRAINT requests_owner_idempotency_key UNIQUE (owner, idempotency_key));
CREATE INDEX requests_owner_created ON public.requests (owner, created_at DESC);
CREATE INDEX requests_open ON public.requests (status) WHERE status IN ('queued', 'running');

-- Quotas per owner: the row of an owner, else the row '*' (the default). Service role only.
CREATE TABLE public.request_quotas (
    owner text PRIMARY KEY,
    max_queued integer NOT NULL CHECK (max_queued >= 0),     -- requests queued or running at once
    max_per_hour integer NOT NULL CHECK (max_per_hour >= 0)); -- requests inserted in the last hour
INSERT INTO public.request_quotas VALUES ('*', 20, 200);

-- ------------------------------------------------------------------------- checks at insert
CREATE FUNCTION public.portopt_request_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    p text;
    q record;
    n integer;
BEGIN
    IF NEW.owner IS NULL THEN
        RAISE EXCEPTION 'a request needs an owner: sign in (the user''s access token), or give owner as the service role'
              USING ERRCODE = '42501';
    END IF;
    IF coalesce(auth.role(), '') IN ('anon', 'authenticated') THEN   -- a client sets none of these (JWT role: definer's rights here)
        NEW.status := 'queued'; NEW.result := NULL; NEW.report := NULL; NEW.error := NULL;
        NEW.created_at := now(); NEW.started_at := NULL; NEW.finished_at := NULL; NEW.duration := NULL;
    END IF;
    NEW.portfolio_id := NULL;
    IF NEW.parameters ? 'portfolio' THEN
        IF jsonb_typeof(NEW.parameters->'portfolio') <> 'string' THEN
            RAISE EXCEPTION 'request parameter portfolio must be a portfolio''s name or id (text), not %',
                  NEW.parameters->'portfolio' USING ERRCODE = '22023';
        END IF;
        p := NEW.parameters->>'portfolio';
        SELECT id INTO NEW.portfolio_id FROM public.portfolios
         WHERE owner = NEW.owner AND (id::text = lower(p) OR portfolio = p)
         ORDER BY (id::text = lower(p)) DESC LIMIT 1;
        IF NEW.portfolio_id IS NULL THEN
            RAISE EXCEPTION 'no portfolio % among your portfolios; create it first or name one of yours', quote_literal(p)
                  USING ERRCODE = '42501';
        END IF;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('portopt_requests:' || NEW.owner));   -- one owner's inserts count in turn
    SELECT max_queued, max_per_hour INTO q FROM public.request_quotas
     WHERE owner IN (NEW.owner, '*') ORDER BY (owner = '*') LIMIT 1;
    IF q IS NOT NULL THEN
        SELECT count(*) INTO n FROM public.requests WHERE owner = NEW.owner AND status IN ('queued', 'running');
        IF n >= q.max_queued THEN
            RAISE EXCEPTION 'quota: % request(s) already queued or running (at most %); wait for one to finish or cancel one',
                  n, q.max_queued USING ERRCODE = 'PT429';
        END IF;
        SELECT count(*) INTO n FROM public.requests WHERE owner = NEW.owner AND created_at > now() - interval '1 hour';
        IF n >= q.max_per_hour THEN
            RAISE EXCEPTION 'quota: % request(s) in the last hour (at most %); try again later', n, q.max_per_hour
                  USING ERRCODE = 'PT429';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER requests_insert BEFORE INSERT ON public.requests
    FOR EACH ROW EXECUTE FUNCTION public.portopt_request_insert();

-- A client may only cancel: queued or running -> cancelled (the listener honours it between steps).
CREATE FUNCTION public.portopt_request_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(auth.role(), '') IN ('anon', 'authenticated') THEN
        IF NOT (OLD.status IN ('queued', 'running') AND NEW.status = 'cancelled') THEN
            RAISE EXCEPTION 'a request can only be cancelled, and only while queued or running (it is %)', OLD.status
                  USING ERRCODE = '42501';
        END IF;
        NEW.finished_at := now();
        NEW.duration := extract(epoch FROM NEW.finished_at - coalesce(OLD.started_at, OLD.created_at));
        NEW.error := 'cancelled by its owner';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id OR NEW.owner IS DISTINCT FROM OLD.owner OR NEW.kind IS DISTINCT FROM OLD.kind
       OR NEW.parameters IS DISTINCT FROM OLD.parameters THEN
        RAISE EXCEPTION 'a request''s id, owner, kind and parameters never change' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER requests_update BEFORE UPDATE ON public.requests
    FOR EACH ROW EXECUTE FUNCTION public.portopt_request_update();

-- The outbox: one event per request (not merged per transaction as data events are: each request is its own unit).
CREATE FUNCTION public.portopt_requests_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE v_id bigint;
BEGIN
    INSERT INTO public.events (topic, payload)
    VALUES ('requests', jsonb_build_object('request_id', NEW.id, 'kind', NEW.kind, 'owner', NEW.owner)) RETURNING id INTO v_id;
    PERFORM pg_notify('portopt_events', json_build_object('id', v_id, 'topic', 'requests')::text);
    RETURN NULL;
END $$;
CREATE TRIGGER requests_event AFTER INSERT ON public.requests
    FOR EACH ROW EXECUTE FUNCTION public.portopt_requests_event();

-- Insert a request, or return the first one with the same idempotency key (the caller's own: invoker's rights).
CREATE FUNCTION public.submit_request(p_kind text, p_parameters jsonb DEFAULT '{}', p_idempotency_key text DEFAULT NULL)
RETURNS SETOF public.requests LANGUAGE plpgsql AS $$
DECLARE v_id uuid;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT id INTO v_id FROM public.requests WHERE owner = (auth.uid())::text AND idempotency_key = p_idempotency_key;
        IF v_id IS NOT NULL THEN
            RETURN QUERY SELECT * FROM public.requests WHERE id = v_id;
            RETURN;
        END IF;
    END IF;
    INSERT INTO public.requests (kind, parameters, idempotency_key) VALUES (p_kind, coalesce(p_parameters, '{}'), p_idempotency_key)
    ON CONFLICT (owner, idempotency_key) DO NOTHING RETURNING id INTO v_id;
    IF v_id IS NULL THEN   -- the same key inserted this instant by another call: theirs is the first
        SELECT id INTO v_id FROM public.requests WHERE owner = (auth.uid())::text AND idempotency_key = p_idempotency_key;
    END IF;
    RETURN QUERY SELECT * FROM public.requests WHERE id = v_id;
END $$;
REVOKE EXECUTE ON FUNCTION public.submit_request(text, jsonb, text) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.submit_request(text, jsonb, text) TO authenticated, service_role;

-- ------------------------------------------------------------------------- privileges, row-level security
ALTER TABLE public.requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.request_quotas ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON public.requests, public.request_quotas FROM PUBLIC, anon, authenticated;
GRANT ALL ON public.requests, public.request_quotas TO service_role;
GRANT SELECT ON public.requests TO authenticated;
GRANT INSERT (kind, parameters, idempotency_key) ON public.requests TO authenticated;
GRANT UPDATE (status) ON public.requests TO authenticated;
CREATE POLICY own_select ON public.requests FOR SELECT TO authenticated USING (owner = (auth.uid())::text);
CREATE POLICY own_insert ON public.requests FOR INSERT TO authenticated WITH CHECK (owner = (auth.uid())::text);
CREATE POLICY own_cancel ON public.requests FOR UPDATE TO authenticated
    USING (owner = (auth.uid())::text AND status IN ('queued', 'running'))
    WITH CHECK (owner = (auth.uid())::text AND status = 'cancelled');

-- Hosted Supabase pushes changes to subscribed clients through Realtime; the local stack has no Realtime (clients poll).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime') THEN
        ALTER PUBLICATION supabase_realtime ADD TABLE public.requests;
    END IF;
END $$;

-- ------------------------------------------------------------------------- the listener's side
-- Mark a claimed request running (its first start is kept: a request taken over after a crash keeps its duration).
-- Returns its status after: 'running', or what it was if it is no longer queued or running (cancelled).
CREATE FUNCTION public.start_request(p_id uuid) RETURNS text LANGUAGE sql AS $$
    WITH up AS (UPDATE public.requests SET status = 'running', started_at = coalesce(started_at, clock_timestamp())
                 WHERE id = p_id AND status IN ('queued', 'running') RETURNING status)
    SELECT coalesce((SELECT status FROM up), (SELECT status FROM public.requests WHERE id = p_id)) $$;
REVOKE EXECUTE ON FUNCTION public.start_request(uuid) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.start_request(uuid) TO service_role;

-- complete_unit learns the pending write 'request' (status, result, report, error of a claimed request), written first:
-- when the request is no longer queued or running (its owner cancelled it meanwhile), nothing else of the unit is
-- written and the run ends failed naming why; a request that ends failed, rejected or cancelled fails its run too.
CREATE OR REPLACE FUNCTION public.complete_unit(p_run_id text, p_claim text, p_output_path text, p_writes jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    w jsonb;
    v_id bigint;
    v_ids bigint[] := '{}';
    v_fail text;
    n int;
BEGIN
    UPDATE public.runs SET status = 'succeeded', finished_at = clock_timestamp(), output_path = p_output_path, error = NULL
     WHERE id = p_run_id AND (p_claim IS NULL OR (status = 'running' AND claim = p_claim));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> 1 THEN
        IF EXISTS (SELECT 1 FROM public.runs WHERE id = p_run_id) THEN
            RAISE EXCEPTION 'run % was taken over by another listener or finished', p_run_id USING ERRCODE = 'PT409';
        END IF;
        RAISE EXCEPTION 'no run %', quote_literal(p_run_id) USING ERRCODE = 'P0002';
    END IF;
    FOR w IN SELECT value FROM jsonb_array_elements(coalesce(p_writes, '[]')) LOOP
        CASE w->>'write'
        WHEN 'request' THEN
            UPDATE public.requests SET status = w->>'status', result = w->'result', report = w->'report', error = w->>'error',
                   finished_at = clock_timestamp(),
                   duration = extract(epoch FROM clock_timestamp() - coalesce(started_at, created_at))
             WHERE id = (w->>'id')::uuid AND status IN ('queued', 'running');
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                v_fail := 'request ' || (w->>'id') || ' is ' || coalesce((SELECT status FROM public.requests WHERE id = (w->>'id')::uuid), 'gone')
                          || ': nothing of it was written';
                EXIT;
            ELSIF w->>'status' <> 'succeeded' THEN
                v_fail := coalesce(w->>'error', 'request ' || (w->>'status'));
            END IF;
        WHEN 'optimization' THEN
            INSERT INTO public.optimizations AS o (id, portfolio_id, strategy, params, as_of, weights, metrics, run_id)
            VALUES (w->>'id', (w->>'portfolio_id')::uuid, w->>'strategy', w->'params', (w->>'as_of')::timestamptz,
                    w->'weights', w->'metrics', w->>'run_id')
            ON CONFLICT (id) DO UPDATE SET portfolio_id = excluded.portfolio_id, strategy = excluded.strategy,
                params = excluded.params, as_of = excluded.as_of, weights = excluded.weights, metrics = excluded.metrics,
                run_id = excluded.run_id;
        WHEN 'reallocation' THEN
            INSERT INTO public.reallocations AS r (id, portfolio_id, as_of, status, plan)
            VALUES (w->>'id', (w->>'portfolio_id')::uuid, (w->>'as_of')::timestamptz, w->>'status', w->'plan')
            ON CONFLICT (id) DO UPDATE SET portfolio_id = excluded.portfolio_id, as_of = excluded.as_of,
                status = excluded.status, plan = excluded.plan;
        WHEN 'alert' THEN
            INSERT INTO public.alerts (portfolio_id, kind, message) VALUES ((w->>'portfolio_id')::uuid, w->>'kind', w->>'message')
            RETURNING id INTO v_id;
            v_ids := v_ids || v_id;
        WHEN 'holdings' THEN
            PERFORM public.write_holdings(w->>'portfolio_id', (w->>'ts')::timestamptz, w->>'source', w->'units');
        ELSE
            RAISE EXCEPTION 'pending write % is not a request, optimization, reallocation, alert or holdings', left(w::text, 80)
                  USING ERRCODE = '22023';
        END CASE;
    END LOOP;
    IF v_fail IS NOT NULL THEN
        UPDATE public.runs SET status = 'failed', error = left(v_fail, 4000) WHERE id = p_run_id;
    END IF;
    RETURN to_jsonb(v_ids);
END $$;
REVOKE EXECUTE ON FUNCTION public.complete_unit(text, text, text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.complete_unit(text, text, text, jsonb) TO service_role;
