"""Client requests through the local Supabase stack (issue 16): the latency from a user's insert (PostgREST, the anon key
and the user's JWT, as a web app) to `succeeded` for a 20-asset optimize request, with the listener running, directly and
through papermill (`"notebook": true`, the listener's warm kernel); then 50 requests queued by 5 users drained by two
listener processes, none lost or run twice, and the drain time.

    .venv/bin/python bench/requests.py [--repeats 20] [--case latency|drain|all]

Starts its own local stack (bench/events.py's `start_stack`: its own folder and port). Prints the median and the worst of
`repeats` requests for each mode against the targets of issue 16 (direct <= 1 s, papermill <= 3 s) and the load average.
The 20 assets are real: the last 400 sessions of skfolio's bundled S&P 500 dataset (20 stocks), stored as the source `sp500`.
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this file is named requests.py: with its folder on sys.path, `import requests` (papermill, jupyter) would find it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_events", HERE / "events.py")
_events = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_events)
start_stack = _events.start_stack   # bench/events.py: the same stack start

TARGETS = {"direct": 1.0, "papermill": 3.0}
REQUEST = {"source": "sp500", "strategy": "min_variance", "window": 180}


def user_token(settings: dict, user_id: str) -> str:
    "A signed-in user's JWT (role authenticated, sub = the user's id), as Supabase Auth issues it, signed with the stack's secret."
    import jwt
    now = int(time.time())
    return jwt.encode({"sub": user_id, "role": "authenticated", "aud": "authenticated", "iat": now, "exp": now + 3600},
                      settings["SUPABASE_JWT_SECRET"], algorithm="HS256")


def as_user(settings: dict, user_id: str):
    from portopt.client import connect
    return connect(settings["SUPABASE_URL"], settings["SUPABASE_ANON_KEY"], user_token(settings, user_id))


def load(settings: dict) -> None:
    "The last 400 sessions of 20 S&P 500 stocks (skfolio's bundled dataset, as bench/walkforward.py), as the service role."
    from skfolio.datasets import load_sp500_dataset
    from portopt.supabase import SupabaseStore
    prices = load_sp500_dataset().iloc[-400:]
    prices.index = pd.DatetimeIndex(prices.index).tz_localize("UTC")
    assert prices.shape[1] == 20 and not prices.isna().any().any()
    long = prices.rename_axis("timestamp").reset_index().melt("timestamp", var_name="asset", value_name="close")
    with SupabaseStore(settings["SUPABASE_URL"], settings["SUPABASE_SERVICE_ROLE_KEY"]) as st:
        st.write_prices(long, "sp500")
        st.mark_events_consumed(st.read_events(pending_only=True)["id"].tolist())


def latency(settings: dict, repeats: int) -> dict:
    "Insert -> succeeded for one user's optimize request, `repeats` times per mode (after one warm-up), a listener thread running."
    from portopt.events import Listener
    from portopt.supabase import SupabaseStore
    client = as_user(settings, str(uuid.uuid4()))
    results = {}
    for mode in TARGETS:
        service = SupabaseStore(settings["SUPABASE_URL"], settings["SUPABASE_SERVICE_ROLE_KEY"])
        listener = Listener(service, papermill=mode == "papermill", warm_kernel=True, poll_interval=5.0,
                            db_url=settings["SUPABASE_DB_URL"])
        stop = threading.Event()
        thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
        thread.start()
        lat = []
        for _ in range(repeats + 1):  # the first warms up (imports, the kernel's first run)
            t0 = time.perf_counter()
            r = client.submit_request("optimize", dict(REQUEST, notebook=mode == "papermill"))
            while (row := client.request_row(r["id"]))["status"] not in ("succeeded", "failed", "rejected", "cancelled"):
                time.sleep(0.01)
            lat.append(time.perf_counter() - t0)
            assert row["status"] == "succeeded" and len(row["result"]["weights"]) == 20, (row["status"], row["error"])
        stop.set()
        thread.join(60)
        listener.close()
        service.close()
        results[mode] = lat[1:]
    for mode, lat in results.items():
        med, worst = statistics.median(lat), max(lat)
        print(f"{mode:>10}: insert -> succeeded median {med:.3f} s, worst {worst:.3f} s over {len(lat)} requests "
              f"(target <= {TARGETS[mode]} s: {'meets' if med <= TARGETS[mode] else 'MISSES'})")
    return results


def _drainer(ready, go, done):
    "A listener process (direct): warm up, wait for the start, run until the queue is empty, report the requests it ran."
    from portopt.events import Listener
    from portopt.supabase import SupabaseStore
    import portopt.commands  # noqa: F401  (imports before the clock: riskfolio, cvxpy)
    st = SupabaseStore()
    listener = Listener(st, papermill=False, poll_interval=0.05)
    st.read_portfolios()
    ready.set()
    go.wait()
    while listener.handle_pending():
        pass
    done.put([(s.request_id, s.status) for s in listener.served])
    listener.close()
    st.close()


def drain(settings: dict, users: int = 5, each: int = 10) -> None:
    "`users` x `each` requests queued, then two listener processes started together; none lost, none run twice."
    import multiprocessing as mp
    import psycopg
    clients = [as_user(settings, str(uuid.uuid4())) for _ in range(users)]
    ids = [c.submit_request("optimize", dict(REQUEST, window=120 + 10 * (k % 6)))["id"] for k in range(each) for c in clients]
    ctx = mp.get_context("spawn")
    ready, go, done = [ctx.Event() for _ in range(2)], ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_drainer, args=(r, go, done)) for r in ready]
    for p in procs:
        p.start()
    for r in ready:
        r.wait(180)
    t0 = time.perf_counter()
    go.set()
    per = [done.get(timeout=900) for _ in procs]
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    ran = [rid for served in per for rid, status in served if status != "skipped"]
    with psycopg.connect(settings["SUPABASE_DB_URL"]) as conn:
        status = dict(conn.execute("SELECT id::text, status FROM public.requests WHERE id = ANY(%s::uuid[])", (ids,)).fetchall())
        runs = dict(conn.execute("SELECT parameters->>'request_id', attempts FROM public.runs WHERE unit LIKE 'request:%%' "
                                 "AND parameters->>'request_id' = ANY(%s)", (ids,)).fetchall())
    lost = [i for i in ids if status.get(i) != "succeeded"]
    doubled = [i for i in ids if ran.count(i) != 1 or runs.get(i) != 1]
    print(f"{len(ids)} requests of {users} users drained by two listeners in {seconds:.1f} s ({len(ids) / seconds:.1f} requests/s); "
          f"ran per listener {[sum(s != 'skipped' for _, s in served) for served in per]}; lost {len(lost)}, run twice {len(doubled)}")
    assert not lost and not doubled, (lost[:3], doubled[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--port", type=int, default=56521)
    ap.add_argument("--case", choices=("latency", "drain", "all"), default="all")
    args = ap.parse_args()
    stack, env, settings = start_stack(args.port)
    try:
        load(settings)
        if args.case in ("latency", "all"):
            latency(settings, args.repeats)
        if args.case in ("drain", "all"):
            drain(settings)
        print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        subprocess.run(stack + ["destroy"], env=env, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
