"""The streamed import (`portopt.imports.import_prices`): a file of many pieces (a small `piece_bytes`) stores exactly
what the whole-file path stores; an anomaly at a piece boundary is refused with the whole-file path's message and
the store unchanged; a re-import writes nothing; the store's bars are still checked."""
import numpy as np
import pandas as pd
import pytest
from conftest import dump

from portopt.clean import DataError
from portopt.data import import_files
from portopt.imports import check_stored_bars, import_prices
from portopt.store import SQLiteStore, WriteResult

PIECE = 4096   # bytes: a 30,000-row file is ~150 pieces, and an asset of 1,000 rows spans several


def _file(path, assets=30, per=1000, start="2021-01-01", freq="h"):
    rng = np.random.default_rng(3)
    stamps = pd.date_range(start, periods=per, freq=freq, tz="UTC")
    frames = [pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%dT%H:%M:%SZ"), "asset": f"A{k:03d}",
                            "open": np.round(100 * np.exp(np.cumsum(rng.normal(0, .01, per))), 6),
                            "high": 0.0, "low": 0.0, "close": 0.0, "volume": np.round(rng.uniform(1, 1e6, per), 3)})
              for k in range(assets)]
    frame = pd.concat(frames, ignore_index=True)
    frame["close"], frame["high"], frame["low"] = frame["open"] * 1.001, frame["open"] * 1.002, frame["open"] * 0.997
    frame.to_csv(path, index=False, float_format="%.6f")
    return frame


def _whole(paths, store_path, **kw):
    with SQLiteStore(store_path) as st:
        files, batches, _ = import_files(paths, **kw)
        check_stored_bars(st, batches)
        return st.write_prices_many([(b, s) for s, b in batches.items()])


def _frames(store_path):
    with SQLiteStore(store_path) as st:
        return {f: st.read_prices(field=f) for f in ("open", "high", "low", "close", "volume")}, st.price_coverage()


def test_a_file_of_many_pieces_stores_what_the_whole_file_path_stores(tmp_path):
    f = tmp_path / "ohlcv.csv"
    _file(f)
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        done = import_prices(st, [f], piece_bytes=PIECE)
        events = st.read_events("prices")
    assert done.streamed, done.why
    assert done.results == {"file:ohlcv.csv": WriteResult(30_000, 0, 0)}
    assert _whole([f], tmp_path / "w.sqlite") == [WriteResult(30_000, 0, 0)]
    (a, cov_a), (b, cov_b) = _frames(tmp_path / "s.sqlite"), _frames(tmp_path / "w.sqlite")
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    pd.testing.assert_frame_equal(cov_a, cov_b)
    assert len(events) == 1 and events["payload"].iloc[0]["inserted"] == 30_000
    assert done.files[0].describe() == (f"{f}: ohlcv layout, 30000 prices of 30 asset(s) (A000, A001, A002, A003, A004, "
                                        f"A005, A006, A007, ...; 2021-01-01 to 2021-02-11); source {done.files[0].source!r}")
    # again: nothing written, not a recorded_at, not an outbox row
    before = dump(tmp_path / "s.sqlite")
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        again = import_prices(st, [f], piece_bytes=PIECE)
    assert again.streamed and list(again.results.values()) == [WriteResult(0, 0, 30_000)]
    assert dump(tmp_path / "s.sqlite") == before


def _boundary_row(f, piece=PIECE):
    "The data row (0-based) that starts the piece after the 40th: inside asset A005's rows."
    text = f.read_bytes()
    header = text.index(b"\n") + 1
    cut = text.index(b"\n", header + 40 * piece) + 1   # pyarrow cuts at a newline
    return text[header:cut].count(b"\n")


@pytest.mark.parametrize("kind", ["jump", "duplicate", "bar", "back"])
def test_an_anomaly_at_a_piece_boundary_is_refused_as_by_the_whole_file_path(tmp_path, kind):
    f = tmp_path / "ohlcv.csv"
    frame = _file(f)
    store = tmp_path / "s.sqlite"
    _file(tmp_path / "other.csv", assets=2)
    _whole([tmp_path / "other.csv"], store)   # something stored already
    before = dump(store)
    # find the boundary by reading pieces the way the streamed path does
    import pyarrow.csv as pcsv
    reader = pcsv.open_csv(f, read_options=pcsv.ReadOptions(block_size=PIECE))
    n = [len(b) for b in reader]
    i = int(np.cumsum(n)[40])   # the first row of piece 41
    assert frame["asset"].iloc[i] == frame["asset"].iloc[i - 1]   # the asset spans the boundary
    bad = frame.copy()
    if kind == "jump":
        bad.loc[i:, ["open", "high", "low", "close"]] *= 5000    # ×5000 from this row on, in this asset and the next
    elif kind == "duplicate":
        bad.loc[i, "timestamp"] = bad.loc[i - 1, "timestamp"]      # the same time, other values
    elif kind == "bar":
        bad.loc[i:, "timestamp"] = (pd.to_datetime(bad.loc[i:, "timestamp"]) + pd.Timedelta("30min")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    else:
        bad.loc[i, "timestamp"], bad.loc[i - 1, "timestamp"] = bad.loc[i - 1, "timestamp"], bad.loc[i, "timestamp"]
    bad.to_csv(f, index=False, float_format="%.6f")
    if kind == "back":   # two rows swapped across the boundary: the whole-file path sorts them (a note); so does the stream's fallback
        with SQLiteStore(store) as st:
            done = import_prices(st, [f], piece_bytes=PIECE)
        assert not done.streamed and done.files[0].notes == ["rows sorted by asset and time"]
        assert _whole([f], tmp_path / "w.sqlite") == [done.results["file:ohlcv.csv"]]
        return
    with pytest.raises(DataError) as whole, SQLiteStore(store) as st:
        files, batches, _ = import_files([f])
        check_stored_bars(st, batches)
    with pytest.raises(DataError) as streamed, SQLiteStore(store) as st:
        import_prices(st, [f], piece_bytes=PIECE)
    assert str(streamed.value) == str(whole.value)
    assert dump(store) == before


def test_the_stored_bars_are_checked_when_streaming(tmp_path):
    "Daily bars of assets the store holds hourly under the same source: refused, as check_stored_bars words it."
    hourly, daily, store = tmp_path / "h.csv", tmp_path / "d.csv", tmp_path / "s.sqlite"
    _file(hourly, assets=5, per=1000)
    _file(daily, assets=5, per=1000, start="2018-01-01", freq="D")
    with SQLiteStore(store) as st:
        assert import_prices(st, [hourly], source="x", piece_bytes=PIECE).streamed
    before = dump(store)
    with pytest.raises(DataError, match=r"source 'x' holds 1 h bars of A000 .* this import has 1 day bars of it"), SQLiteStore(store) as st:
        import_prices(st, [daily], source="x", piece_bytes=PIECE)
    assert dump(store) == before
    with SQLiteStore(store) as st:   # under its own source it goes in
        done = import_prices(st, [daily], source="x-1d", piece_bytes=PIECE)
    assert done.streamed and done.results == {"x-1d": WriteResult(5000, 0, 0)}


def test_several_files_stream_in_one_transaction_and_unsorted_falls_back(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _file(a, assets=10)
    fb = _file(b, assets=10).assign(asset=lambda x: x["asset"].str.replace("A", "B"))
    fb.to_csv(b, index=False, float_format="%.6f")
    with SQLiteStore(tmp_path / "s.sqlite") as st:
        done = import_prices(st, [a, b], source="s", piece_bytes=PIECE)
    assert done.streamed and done.results == {"s": WriteResult(20_000, 0, 0)}
    assert [f.rows for f in done.files] == [10_000, 10_000]
    fb.iloc[::-1].to_csv(b, index=False, float_format="%.6f")   # newest first: the whole-file path sorts it, with a note
    with SQLiteStore(tmp_path / "t.sqlite") as st:
        done = import_prices(st, [a, b], source="s", piece_bytes=PIECE)
    assert not done.streamed and "key order" in done.why
    assert done.results == {"s": WriteResult(20_000, 0, 0)} and any("sorted" in n for f in done.files for n in f.notes)


def _recorded(store_path, asset, ts):
    with SQLiteStore(store_path) as st:
        return st.conn.execute("SELECT recorded_at FROM prices WHERE asset = ? AND ts = ?", (asset, ts)).fetchone()[0]


def test_a_reimport_with_a_few_changes_counts_and_stores_exactly_those(tmp_path):
    """A re-import where a few rows changed inside pieces (values, value → NaN, NaN → value) and rows were added at the
    end of an asset in mid-file and at the file's end: counts exact, the changed rows and only they rewritten (new
    recorded_at), the store as the whole-file path leaves it; then the same file again changes nothing."""
    f, s, w = tmp_path / "ohlcv.csv", tmp_path / "s.sqlite", tmp_path / "w.sqlite"
    v1 = _file(f)
    v1.loc[[1_500, 20_700], "volume"] = np.nan                     # NaN now, a value in v2
    v1.to_csv(f, index=False, float_format="%.6f")
    with SQLiteStore(s) as st:
        assert import_prices(st, [f], piece_bytes=PIECE).results == {"file:ohlcv.csv": WriteResult(30_000, 0, 0)}
    assert _whole([f], w) == [WriteResult(30_000, 0, 0)]
    kept_at, changed_ts = _recorded(s, "A010", "2021-01-01T00:00:00Z"), v1.loc[10_500, "timestamp"]
    v2 = v1.copy()
    v2.loc[[10_500, 10_501, 10_502], "close"] *= 1.0003           # three rows in the middle of A010 (and of a piece)
    v2.loc[[1_500, 20_700], "volume"] = [12.5, 7.0]
    v2.loc[[3_333, 29_998], "volume"] = np.nan                     # a value now NaN
    stamps = pd.date_range(pd.Timestamp(v1.loc[5_999, "timestamp"]) + pd.Timedelta("1h"), periods=3, freq="h")
    more5 = v1.loc[[5_999] * 3].assign(timestamp=stamps.strftime("%Y-%m-%dT%H:%M:%SZ"))
    stamps = pd.date_range(pd.Timestamp(v1.loc[29_999, "timestamp"]) + pd.Timedelta("1h"), periods=2, freq="h")
    more29 = v1.loc[[29_999] * 2].assign(timestamp=stamps.strftime("%Y-%m-%dT%H:%M:%SZ"))
    v2 = pd.concat([v2.loc[:5_999], more5, v2.loc[6_000:], more29], ignore_index=True)   # A005 and A029 longer
    v2.to_csv(f, index=False, float_format="%.6f")
    with SQLiteStore(s) as st:
        done = import_prices(st, [f], piece_bytes=PIECE)
        events = st.read_events("prices")
    assert done.streamed, done.why
    assert done.results == {"file:ohlcv.csv": WriteResult(5, 7, 29_993)}
    assert len(events) == 2 and (events["payload"].iloc[-1]["inserted"], events["payload"].iloc[-1]["updated"]) == (5, 7)
    assert _whole([f], w) == [WriteResult(5, 7, 29_993)]
    (a, cov_a), (b, cov_b) = _frames(s), _frames(w)
    for k in a:
        pd.testing.assert_frame_equal(a[k], b[k])
    pd.testing.assert_frame_equal(cov_a, cov_b)
    close, volume = a["close"], a["volume"]
    t = pd.Timestamp(changed_ts)
    new_close = v2.loc[(v2["asset"] == "A010") & (v2["timestamp"] == changed_ts), "close"].iloc[0]
    assert close.loc[t, "A010"] == pytest.approx(new_close, abs=1e-6)
    assert abs(close.loc[t, "A010"] - v1.loc[10_500, "close"]) > 1e-3
    assert volume.loc[pd.Timestamp(v1.loc[1_500, "timestamp"]), "A001"] == 12.5
    assert np.isnan(volume.loc[pd.Timestamp(v1.loc[3_333, "timestamp"]), "A003"])
    assert len(close["A005"].dropna()) == 1003 and len(close["A029"].dropna()) == 1002
    assert _recorded(s, "A010", "2021-01-01T00:00:00Z") == kept_at        # unchanged: recorded_at kept
    assert _recorded(s, "A010", changed_ts) > kept_at                      # changed: recorded now
    before = dump(s)                                                      # the same file again: nothing written
    with SQLiteStore(s) as st:
        again = import_prices(st, [f], piece_bytes=PIECE)
    assert again.streamed and again.results == {"file:ohlcv.csv": WriteResult(0, 0, 30_005)}
    assert dump(s) == before


def test_the_stored_bar_check_words_the_same_refusal_on_any_store(tmp_path):
    "A SQLite store reads the coverage and stored times directly; another store (here a plain wrapper) through `price_coverage` and `read_prices`: same refusal."
    hourly, daily, store = tmp_path / "h.csv", tmp_path / "d.csv", tmp_path / "s.sqlite"
    _file(hourly, assets=5, per=1000)
    _file(daily, assets=5, per=1000, start="2018-01-01", freq="D")
    with SQLiteStore(store) as st:
        import_prices(st, [hourly], source="x", piece_bytes=PIECE)
        _, batches, _ = import_files([daily], source="x")

        class Other:   # not a SQLiteStore: the general reads
            price_coverage, read_prices = st.price_coverage, st.read_prices

        errors = []
        for s in (st, Other()):
            with pytest.raises(DataError) as e:
                check_stored_bars(s, batches)
            errors.append(str(e.value))
        check_stored_bars(Other(), {"y": batches["x"]})   # another source: nothing to check
    assert errors[0] == errors[1] and errors[0].startswith("source 'x' holds 1 h bars of A000 (to 2021-02-11 15:00)")
