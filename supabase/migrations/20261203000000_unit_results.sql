-- Results written with the claim (issue 14): each claim of a unit sets a fresh token (runs.claim), and a run is
-- finished only by the listener that still holds it (finish_run filters on the token), so a listener whose lease
-- was taken over by another never marks the run done.
ALTER TABLE public.runs ADD COLUMN claim text;

DROP FUNCTION public.claim_unit(text, text, text, text, jsonb, double precision, boolean);
CREATE FUNCTION public.claim_unit(p_unit text, p_id text, p_job text, p_trigger text, p_parameters jsonb,
                                  p_lease_seconds double precision, p_retry_failed boolean, p_claim text) RETURNS text
LANGUAGE sql AS $$
    INSERT INTO public.runs AS r (id, job, trigger, parameters, status, started_at, unit, lease_until, attempts, claim)
    VALUES (p_id, p_job, p_trigger, p_parameters, 'running', clock_timestamp(), p_unit,
            clock_timestamp() + make_interval(secs => p_lease_seconds), 1, p_claim)
    ON CONFLICT (unit) DO UPDATE SET status = 'running', started_at = excluded.started_at, finished_at = NULL,
        error = NULL, lease_until = excluded.lease_until, attempts = r.attempts + 1, claim = excluded.claim
    WHERE (r.status = 'failed' AND p_retry_failed) OR (r.status = 'running' AND r.lease_until < clock_timestamp())
    RETURNING id $$;
REVOKE EXECUTE ON FUNCTION public.claim_unit(text, text, text, text, jsonb, double precision, boolean, text) FROM PUBLIC, anon, authenticated;
GRANT EXECUTE ON FUNCTION public.claim_unit(text, text, text, text, jsonb, double precision, boolean, text) TO service_role;
