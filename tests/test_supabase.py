"""Supabase-only guarantees, against the local stack through its REST API (supabase-py) and its database:
row-level security, the rpc functions, the outbox triggers, one transaction per batch, the same columns as SQLite."""
import sqlite3
import uuid

import pandas as pd
import psycopg
import pytest

from portopt.config import StoreError
from portopt.store import TABLES, SQLiteStore
from portopt.stores import open_store
from portopt.supabase import SupabaseStore

ALICE, BOB = str(uuid.uuid4()), str(uuid.uuid4())


@pytest.fixture
def stack(supabase_stack):
    supabase_stack.reset()
    return supabase_stack


def as_user(stack, user_id):
    s = stack.settings
    return SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"], access_token=stack.user_token(user_id))


def service(stack):
    s = stack.settings
    return SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_SERVICE_ROLE_KEY"])


def test_tables_have_the_same_columns_as_sqlite(stack, tmp_path):
    with SQLiteStore(tmp_path / "s.sqlite") as lite:
        sqlite_cols = {t: [r[1] for r in lite.conn.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"]) as conn:
        pg_cols = {t: [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                                  "'public' AND table_name = %s ORDER BY ordinal_position", (t,))]
                   for t in TABLES}
    assert pg_cols == sqlite_cols


def test_users_see_and_change_only_their_own_portfolios(stack):
    alice, bob = as_user(stack, ALICE), as_user(stack, BOB)
    alice.upsert_portfolio("alice-fund", settings={"assets": ["SOL"]})  # owner defaults to the signed-in user
    alice.write_holdings("alice-fund", pd.Series({"SOL": 3.0}), "2024-01-01")
    alice.upsert_portfolio("alice-fund", wallet="w1")  # an upsert: INSERT, UPDATE and SELECT policies
    bob.upsert_portfolio("bob-fund")
    assert alice.read_portfolios()["portfolio"].tolist() == ["alice-fund"]
    assert alice.read_portfolios().loc[0, "owner"] == ALICE and alice.read_portfolios().loc[0, "wallet"] == "w1"
    assert bob.read_portfolios()["portfolio"].tolist() == ["bob-fund"]
    assert bob.read_holdings("alice-fund").empty  # invisible, not an error
    with pytest.raises(StoreError, match="no portfolio 'alice-fund'"):
        bob.write_holdings("alice-fund", pd.Series({"SOL": 99.0}), "2024-01-02")
    with pytest.raises(StoreError, match="permission denied|row-level security"):
        bob.upsert_portfolio("bob-fund", owner=ALICE)  # a portfolio in someone else's name
    with pytest.raises(StoreError, match="no portfolio 'alice-fund'"):  # a name resolves among one's own portfolios only
        bob.write_reallocation("alice-fund", "2024-01-02", "planned", {"trades": {}})
    with pytest.raises(StoreError, match="no portfolio"):  # nor does Alice's id
        bob.write_reallocation(alice.portfolio_id("alice-fund"), "2024-01-02", "planned", {"trades": {}})
    with pytest.raises(Exception, match="row-level security"):  # and a REST row naming it is refused
        bob.client.table("reallocations").insert({"id": "x", "portfolio_id": alice.portfolio_id("alice-fund"),
                                                  "as_of": "2024-01-02T00:00:00Z", "status": "planned", "plan": {}}).execute()
    # Bob's update of Alice's row through the REST API matches no row and changes nothing
    bob.client.table("portfolios").update({"wallet": "stolen"}).eq("portfolio", "alice-fund").execute()
    assert service(stack).read_portfolios().set_index("portfolio").loc["alice-fund", "wallet"] == "w1"
    assert service(stack).read_holdings("alice-fund").to_dict() == {"SOL": 3.0}
    # results and alerts of Alice's portfolio are hers alone
    svc = service(stack)
    svc.write_optimization("min_variance", {"window": 30}, pd.Series({"SOL": 1.0}), {"sharpe": 1.0}, portfolio="alice-fund")
    svc.write_alert("drift", "SOL off target", portfolio="alice-fund")
    svc.write_backtest("hrp", {"portfolio": "alice-fund", "window": 30}, {"sharpe": 0.5},
                       pd.Series([0.01], index=pd.date_range("2024-01-01", periods=1, tz="UTC")))
    assert len(alice.read_optimizations()) == 1 and len(alice.read_alerts()) == 1 and len(alice.read_backtests()) == 1
    assert bob.read_optimizations().empty and bob.read_alerts().empty and bob.read_backtests().empty


def test_the_anon_key_reads_no_private_rows_and_the_service_role_reads_all(stack):
    as_user(stack, ALICE).upsert_portfolio("alice-fund")
    as_user(stack, BOB).upsert_portfolio("bob-fund")
    svc = service(stack)
    svc.write_prices(pd.DataFrame({"timestamp": pd.to_datetime(["2024-01-01"], utc=True), "asset": ["SOL"], "close": [100.0]}), "x")
    svc.write_alert("drift", "off target", portfolio="alice-fund")
    s = stack.settings
    anon = SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"])
    for table in ("portfolios", "holdings", "optimizations", "reallocations", "backtests", "alerts", "prices"):
        assert anon.client.table(table).select("*").execute().data == [], table
    for table in ("runs", "events"):
        with pytest.raises(Exception, match="permission denied"):
            anon.client.table(table).select("*").execute()
    alice = as_user(stack, ALICE)
    for who in (anon, alice):  # nobody but the service role writes the outbox, even through the trigger helper
        with pytest.raises(Exception, match="permission denied"):
            who.client.rpc("portopt_emit", {"p_topic": "prices", "p_payload": {"assets": ["SOL"]}}).execute()
        with pytest.raises(Exception, match="permission denied"):
            who.client.table("events").insert({"topic": "prices", "payload": {}}).execute()
    assert svc.read_portfolios()["portfolio"].tolist() == ["alice-fund", "bob-fund"]
    assert len(svc.read_events()) >= 2 and len(svc.read_alerts()) == 1


def test_market_data_is_read_by_users_and_written_by_the_service_role_only(stack):
    frame = pd.DataFrame({"timestamp": pd.to_datetime(["2024-01-01"], utc=True), "asset": ["SOL"], "close": [100.0]})
    service(stack).write_prices(frame, "x")
    alice = as_user(stack, ALICE)
    assert alice.read_prices(["SOL"])["SOL"].tolist() == [100.0]
    with pytest.raises(StoreError, match="permission denied"):
        alice.write_prices(frame.assign(close=1.0), "x")
    with pytest.raises(Exception, match="row-level security|permission denied"):
        alice.client.table("prices").insert({"asset": "SOL", "ts": "2024-01-02T00:00:00Z", "source": "x", "close": 1}).execute()
    assert service(stack).read_prices(["SOL"])["SOL"].tolist() == [100.0]


def test_rpc_functions_history_and_portfolio_statistics(stack):
    svc = service(stack)
    t = pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"], utc=True)
    svc.write_prices(pd.DataFrame({"timestamp": list(t) * 2, "asset": ["SOL"] * 3 + ["USDC"] * 3,
                                   "close": [100.0, 110.0, 120.0, 1.0, 1.0, 1.0]}), "x")
    rows = svc.client.rpc("get_historical_data", {"assets": ["SOL"], "start": "2024-01-02", "end": "2024-01-03"}).execute().data
    assert [(r["ts"][:10], r["close"]) for r in rows] == [("2024-01-02", 110.0), ("2024-01-03", 120.0)]
    svc.upsert_portfolio("fund")
    svc.write_holdings("fund", pd.Series({"SOL": 1.0, "USDC": 90.0}), "2024-01-01")
    stats = svc.client.rpc("calculate_portfolio_statistics", {"portfolio_id": "fund", "as_of": "2024-01-02"}).execute().data
    assert stats["value"] == 200.0 and stats["weights"] == {"SOL": 0.55, "USDC": 0.45} and stats["missing"] == []


def test_a_failing_batch_function_writes_nothing_not_even_its_event(stack):
    svc = service(stack)
    rows = [{"asset": "SOL", "ts": "2024-01-01T00:00:00Z", "close": 100.0}, {"asset": "SOL", "ts": "2024-01-02T00:00:00Z", "close": -1.0}]
    with pytest.raises(StoreError, match="prices_close_check"):
        svc._rpc("write_prices", {"p_source": "x", "p_rows": rows})
    assert svc.price_coverage().empty and svc.read_events().empty
    assert svc.client.table("assets").select("*").execute().data == []


def test_a_rest_insert_of_many_rows_writes_one_event_and_notifies(stack):
    svc = service(stack)
    svc.client.table("assets").insert({"asset": "SOL"}).execute()
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"], autocommit=True) as listener:
        listener.execute("LISTEN portopt_events")
        rows = [{"asset": "SOL", "ts": f"2024-01-0{d}T00:00:00Z", "source": "rest", "close": 100.0 + d} for d in range(1, 6)]
        svc.client.table("prices").insert(rows).execute()
        note = next(listener.notifies(timeout=10))
    events = svc.read_events("prices")
    assert len(events) == 1 and events.loc[0, "payload"]["inserted"] == 5
    assert events.loc[0, "payload"]["start"] == "2024-01-01T00:00:00Z" and events.loc[0, "payload"]["end"] == "2024-01-05T00:00:00Z"
    assert note.channel == "portopt_events" and f'"id" : {events.loc[0, "id"]}' in note.payload


def test_open_store_picks_supabase_from_the_environment(stack, monkeypatch, tmp_path):
    for k, v in stack.env_vars().items():
        monkeypatch.setenv(k, v)
    st = open_store()
    assert isinstance(st, SupabaseStore) and st.path == stack.settings["SUPABASE_URL"]
    assert isinstance(open_store(tmp_path / "s.sqlite"), SQLiteStore)
    assert isinstance(open_store(stack.settings["SUPABASE_URL"]), SupabaseStore)


def test_two_listeners_share_the_queue_and_handle_each_event_once(stack, monkeypatch):
    import threading
    from portopt.events import Listener
    for k, v in stack.env_vars().items():
        monkeypatch.setenv(k, v)
    svc = service(stack)
    seen, lock = [], threading.Lock()

    def record(listener, topic, event_id, payload):
        with lock:
            seen.append(event_id)
        return []

    for i in range(12):
        svc.client.table("events").insert({"topic": "work", "payload": {"i": i}}).execute()
    listeners = [Listener(SupabaseStore(), papermill=False, handlers={"work": record}) for _ in range(2)]
    threads = [threading.Thread(target=l.handle_pending) for l in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for l in listeners:
        l.close()
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 12  # each once, none lost
    assert svc.read_events("work", pending_only=True).empty


# ---------------------------------------------------------------- identity, not names (issue 14, item 2)
OWNED = ("holdings", "optimizations", "reallocations", "alerts", "backtests")


def _fill(store, name):
    "One row in every owned table of portfolio `name`, written through the API as its owner."
    store.write_holdings(name, pd.Series({"SOL": 3.0}), "2024-01-01")
    store.write_optimization("min_variance", {"window": 30}, pd.Series({"SOL": 1.0}), {"sharpe": 1.0}, portfolio=name)
    store.write_reallocation(name, "2024-01-02", "planned", {"trades": {"SOL": 1.0}})
    store.write_alert("drift", "SOL off target", portfolio=name)
    store.write_backtest("hrp", {"portfolio": name, "window": 30}, {"sharpe": 0.5},
                         pd.Series([0.01], index=pd.date_range("2024-01-01", periods=1, tz="UTC")))


def _rows(stack, where="true") -> dict:
    with psycopg.connect(stack.settings["SUPABASE_DB_URL"]) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM public.{t} WHERE {where}").fetchone()[0] for t in OWNED}


def test_a_deleted_portfolio_takes_its_rows_and_its_reused_name_sees_none(stack):
    alice, bob = as_user(stack, ALICE), as_user(stack, BOB)
    alice.upsert_portfolio("P", settings={"assets": ["SOL"]})
    _fill(alice, "P")
    old = alice.portfolio_id("P")
    assert _rows(stack, f"portfolio_id = '{old}'") == dict.fromkeys(OWNED, 1)
    for t in OWNED:  # Alice reads her rows through REST
        assert len(alice.client.table(t).select("*").execute().data) == 1, t
    assert alice.read_alerts().loc[0, "portfolio"] == "P" and alice.read_reallocations("P").loc[0, "portfolio_id"] == old
    assert alice.delete_portfolio("P") == 6  # five rows and the portfolio
    assert _rows(stack) == dict.fromkeys(OWNED, 0)  # gone from the database, by ON DELETE CASCADE
    bob.upsert_portfolio("P")
    assert bob.portfolio_id("P") != old
    for t in OWNED:  # Bob's "P" is another portfolio: none of Alice's rows, through REST or the store
        assert bob.client.table(t).select("*").execute().data == [], t
        assert bob.client.table(t).select("*").eq("portfolio_id", old).execute().data == [], t
    assert bob.read_holdings("P").empty and bob.read_reallocations("P").empty and bob.read_alerts().empty
    assert bob.read_optimizations().empty and bob.read_backtests().empty
    alice.upsert_portfolio("P")  # and Alice's own re-created "P" starts empty too
    assert alice.read_holdings("P").empty and alice.read_alerts().empty and alice.read_backtests().empty


def test_two_owners_hold_one_name_apart(stack):
    alice, bob, svc = as_user(stack, ALICE), as_user(stack, BOB), service(stack)
    alice.upsert_portfolio("P", settings={"assets": ["SOL"]})
    _fill(alice, "P")
    bob.upsert_portfolio("P", settings={"assets": ["USDC"]})  # a name Alice holds: no conflict, no error
    a, b = alice.portfolio_id("P"), bob.portfolio_id("P")
    assert a != b and bob.read_portfolios()[["portfolio", "id"]].values.tolist() == [["P", b]]
    for t in OWNED:  # Bob sees none of Alice's rows, and Alice's are untouched
        assert bob.client.table(t).select("*").execute().data == [], t
    _fill(bob, "P")
    assert _rows(stack, f"portfolio_id = '{a}'") == _rows(stack, f"portfolio_id = '{b}'") == dict.fromkeys(OWNED, 1)
    assert alice.read_holdings("P").to_dict() == {"SOL": 3.0} and len(alice.read_alerts()) == 1
    # the service role sees both: a name two owners hold is refused, an id is not
    with pytest.raises(StoreError, match="held by 2 owners; pass its id"):
        svc.read_holdings("P")
    assert svc.read_holdings(b).to_dict() == {"SOL": 3.0} and svc.portfolio_row(a)["owner"] == ALICE
    named = (svc.client.table("reallocations").select("id,portfolios!inner(portfolio)", count="exact")  # bench/events.py's count
             .like("portfolios.portfolio", "P%").limit(1).execute())
    assert named.count == 2 and named.data[0]["portfolios"] == {"portfolio": "P"}
    bob.delete_portfolio("P")
    assert _rows(stack, f"portfolio_id = '{a}'") == dict.fromkeys(OWNED, 1)  # Bob's delete leaves Alice's rows


def test_creating_a_name_never_tells_of_another_users_portfolio(stack):
    from postgrest.exceptions import APIError
    alice, bob = as_user(stack, ALICE), as_user(stack, BOB)
    alice.upsert_portfolio("P")
    a = alice.portfolio_id("P")
    assert bob.client.table("portfolios").insert({"portfolio": "P"}).execute().data[0]["owner"] == BOB  # no 409
    with pytest.raises(APIError) as dup:  # Bob's own duplicate: a conflict that names only Bob's key
        bob.client.table("portfolios").insert({"portfolio": "P"}).execute()
    said = " ".join(str(getattr(dup.value, k, "")) for k in ("code", "message", "details", "hint"))
    assert dup.value.code == "23505" and "portfolios_owner_portfolio_key" in said  # (owner, name): Bob's own key
    assert ALICE not in said and a not in said and "portfolios_pkey" not in said
    with pytest.raises(APIError) as chosen:  # an id cannot be chosen, so an insert cannot probe one
        bob.client.table("portfolios").insert({"portfolio": "Q", "id": a}).execute()
    assert chosen.value.code == "42501" and a not in str(chosen.value)
    with pytest.raises(Exception, match="never changes|permission denied"):  # nor changed
        alice.client.table("portfolios").update({"id": str(uuid.uuid4())}).eq("id", a).execute()
    assert alice.portfolio_id("P") == a


def test_the_identity_migration_keeps_rows_with_their_portfolio(stack, tmp_path):
    "A database at the migration before (names as keys), with data, migrated: each row stays with its portfolio."
    import shutil
    from psycopg.conninfo import make_conninfo
    from portopt.supabase import apply_migrations, migrations_dir
    url, db = stack.settings["SUPABASE_DB_URL"], f"portopt_mig_{uuid.uuid4().hex[:8]}"
    before = tmp_path / "before"
    before.mkdir()
    for f in sorted(migrations_dir().glob("*.sql")):
        if f.name < "20261202000000":
            shutil.copy(f, before / f.name)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db}")
    mig = make_conninfo(url, dbname=db)
    try:
        with psycopg.connect(mig, autocommit=True) as conn:
            conn.execute((migrations_dir().parent / "local" / "bootstrap.sql").read_text())
        apply_migrations(mig, before)
        with psycopg.connect(mig, autocommit=True) as conn:
            for name, owner in (("a", ALICE), ("b", BOB)):
                conn.execute("INSERT INTO portfolios (portfolio, owner) VALUES (%s, %s)", (name, owner))
                conn.execute("SELECT write_holdings(%s, '2024-01-01', 'manual', %s::jsonb)", (name, '{"SOL": 1}'))
                conn.execute("INSERT INTO optimizations (id, portfolio, strategy, params, weights, metrics) "
                             "VALUES (%s, %s, 'hrp', '{}', '{}', '{}')", ("o-" + name, name))
                conn.execute("INSERT INTO reallocations (id, portfolio, as_of, status, plan) "
                             "VALUES (%s, %s, '2024-01-02', 'planned', '{}')", ("r-" + name, name))
                conn.execute("INSERT INTO alerts (portfolio, kind, message) VALUES (%s, 'drift', %s)", (name, "m-" + name))
                conn.execute("INSERT INTO backtests (id, strategy, config, metrics, returns) VALUES (%s, 'hrp', %s, '{}', '{}')",
                             ("t-" + name, '{"portfolio": "%s"}' % name))
            # the leak of before: rows of a deleted portfolio "gone", and a global alert and a portfolio-less optimization
            conn.execute("INSERT INTO alerts (portfolio, kind, message) VALUES ('gone', 'drift', 'm-gone'), (NULL, 'stale_data', 'm-all')")
            conn.execute("INSERT INTO reallocations (id, portfolio, as_of, status, plan) VALUES ('r-gone', 'gone', '2024-01-02', 'held', '{}')")
            conn.execute("INSERT INTO optimizations (id, portfolio, strategy, params, weights, metrics) "
                         "VALUES ('o-none', NULL, 'hrp', '{}', '{}', '{}')")
        assert apply_migrations(mig) == ["20261202000000_portfolio_identity.sql", "20261203000000_unit_results.sql",
                                         "20261208000000_complete_unit.sql", "20261209000000_requests.sql",
                                         "20261210000000_price_revisions.sql"]
        with psycopg.connect(mig) as conn:
            ids = dict(conn.execute("SELECT portfolio, id::text FROM portfolios"))
            owner = dict(conn.execute("SELECT id::text, owner FROM portfolios"))
            assert sorted(ids) == ["a", "b"] and ids["a"] != ids["b"] and owner[ids["a"]] == ALICE
            for name in ("a", "b"):
                pid = ids[name]
                assert conn.execute("SELECT count(*) FROM holdings WHERE portfolio_id = %s", (pid,)).fetchone()[0] == 1
                for t, key in (("optimizations", "id"), ("reallocations", "id"), ("backtests", "id"), ("alerts", "message")):
                    got = conn.execute(f"SELECT {key} FROM {t} WHERE portfolio_id = %s", (pid,)).fetchall()
                    assert got == [({"alerts": "m-", "backtests": "t-"}.get(t, t[0] + "-") + name,)], (t, got)
            assert conn.execute("SELECT message FROM alerts WHERE portfolio_id IS NULL").fetchall() == [("m-all",)]
            assert conn.execute("SELECT id FROM optimizations WHERE portfolio_id IS NULL").fetchall() == [("o-none",)]
            assert conn.execute("SELECT count(*) FROM reallocations WHERE id = 'r-gone'").fetchone()[0] == 0
            run = conn.execute("SELECT parameters FROM runs WHERE job = 'migrate'").fetchone()[0]
            assert run["dropped"] == {"holdings": 0, "optimizations": 0, "reallocations": 1, "alerts": 1}
            conn.execute("DELETE FROM portfolios WHERE id = %s", (ids["a"],))  # and the cascade holds for migrated rows
            assert conn.execute("SELECT count(*) FROM reallocations WHERE portfolio_id = %s", (ids["a"],)).fetchone()[0] == 0
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_only_the_service_role_claims_units_and_a_lost_claim_marks_nothing(stack):
    "claim_unit and complete_unit are executable by the service role only; finish_run and complete_run check the claim token."
    from portopt.store import ClaimLost
    s = stack.settings
    args = {"p_unit": "u1", "p_id": "r1", "p_job": "rebalance", "p_trigger": "event", "p_parameters": {},
            "p_lease_seconds": 60.0, "p_retry_failed": False, "p_claim": "stolen"}
    for who in (SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"]), as_user(stack, ALICE)):
        with pytest.raises(Exception, match="permission denied"):
            who.client.rpc("claim_unit", args).execute()
    svc = service(stack)
    assert svc.read_units().empty  # the refused calls wrote nothing
    c = svc.claim_unit("u1", "rebalance", {}, lease_seconds=60)
    assert len(c.token) == 32 and svc.claim_unit("u1", "rebalance", {}) is None  # held by a live lease
    with pytest.raises(ClaimLost, match="taken over"):
        svc.finish_run(c, "succeeded", claim="another-listeners-token")
    assert svc.read_units()["status"].tolist() == ["running"]
    done = {"p_run_id": str(c), "p_claim": c.token, "p_output_path": None,
            "p_writes": [{"write": "alert", "portfolio_id": None, "kind": "drift", "message": "forged"}]}
    for who in (SupabaseStore(s["SUPABASE_URL"], s["SUPABASE_ANON_KEY"]), as_user(stack, ALICE)):
        with pytest.raises(Exception, match="permission denied"):  # nor do they complete a unit, or write through it
            who.client.rpc("complete_unit", done).execute()
    with pytest.raises(ClaimLost, match="taken over"):  # a lost claim completes nothing and writes nothing
        svc.complete_run(c, done["p_writes"], claim="another-listeners-token")
    assert svc.read_units()["status"].tolist() == ["running"] and svc.read_alerts().empty
    svc.finish_run(c, "succeeded", claim=c.token)
    assert svc.read_units()["status"].tolist() == ["succeeded"]
