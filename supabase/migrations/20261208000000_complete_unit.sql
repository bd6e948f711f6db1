-- Results written with the claim (issue 14, item 4): a unit's results (optimizations, reallocations, alerts, holdings,
-- in order) and its run's `succeeded` commit in one transaction, or not at all. The listener computes them against
-- portopt.store.PendingWrites (directly, or in a report notebook that hands them back as JSON) and sends them here in
-- one call. The claim is checked first: a listener whose lease was taken over gets PT409 (HTTP 409) and writes nothing.
-- Service role only, like claim_unit: a signed-in user never marks runs.
CREATE FUNCTION public.complete_unit(p_run_id text, p_claim text, p_output_path text, p_writes jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    w jsonb;
    v_id bigint;
    v_ids bigint[] := '{}';
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
            RAISE EXCEPTION 'pending write % is not an optimization, reallocation, alert or holdings', left(w::text, 80)
                  USING ERRCODE = '22023';
        END CASE;
    END LOOP;
    RETURN to_jsonb(v_ids);
END $$;
REVOKE EXECUTE ON FUNCTION public.complete_unit(text, text, text, jsonb) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.complete_unit(text, text, text, jsonb) TO service_role;

-- The portfolios a price event touches by their holdings, in one query (the listener read every portfolio's latest
-- snapshot one request at a time): the ids whose latest snapshot holds one of the assets. Invoker's rights: a user
-- sees their own; the listener (service role) sees all.
CREATE FUNCTION public.portfolios_holding(p_assets text[]) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(DISTINCT h.portfolio_id), '[]'::jsonb) FROM public.holdings h
     WHERE h.asset = ANY(p_assets)
       AND h.ts = (SELECT max(x.ts) FROM public.holdings x WHERE x.portfolio_id = h.portfolio_id) $$;
