import multiprocessing as mp

import pandas as pd
import pytest

from fashion_pipeline.core import warehouse as wh
from fashion_pipeline.core.model_store import ModelNotFoundError, ModelStore


def _writer(path, name, n):
    for i in range(n):
        wh.write_table(path, name, pd.DataFrame({"i": range(i * 100, i * 100 + 100)}))


def test_tables_round_trip_and_are_replaced(tmp_path):
    path = tmp_path / "w.duckdb"
    df = pd.DataFrame({"a": [1, 2], "b": ["x", None], "c": [[1.0], [2.0, 3.0]]})
    assert wh.write_table(path, "t", df) == 2
    back = wh.read_table(path, "t")
    assert back["a"].tolist() == [1, 2] and back["b"].tolist()[0] == "x" and list(back["c"][1]) == [2.0, 3.0]
    wh.write_table(path, "t", df.iloc[:1])
    assert len(wh.read_table(path, "t")) == 1
    with pytest.raises(LookupError, match="materialize the asset 'nope'"):
        wh.read_table(path, "nope")
    with pytest.raises(ValueError):
        wh.write_table(path, "bad name; drop table t", df)


def test_concurrent_writer_processes_queue_instead_of_failing(tmp_path):
    path = tmp_path / "w.duckdb"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), f"t{k}", 5)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    for k in range(3):
        assert wh.read_table(path, f"t{k}")["i"].tolist() == list(range(400, 500))


def test_model_store_versions_publish_and_load(tmp_path):
    store = ModelStore(tmp_path / "models")
    with pytest.raises(ModelNotFoundError, match="materialize"):
        store.load("price")
    v1 = store.save("price", {"w": 1}, {"r2": 0.5}, {"features": ["a"]})
    v2 = store.save("price", {"w": 2}, {"r2": 0.6}, {"features": ["a"]})
    assert store.versions("price") == sorted([v1, v2])
    assert store.load("price")[0] == {"w": 2}                # latest when nothing published
    store.publish("price", v1)
    model, info = store.load("price")
    assert model == {"w": 1} and info["metrics"]["r2"] == 0.5 and store.published("price")["version"] == v1
    with pytest.raises(ModelNotFoundError):
        store.publish("price", "no-such-version")


def test_a_parquet_view_is_queryable_even_with_a_quote_in_its_path(tmp_path):
    path = tmp_path / "w.duckdb"
    folder = tmp_path / "it's here"
    folder.mkdir()
    pd.DataFrame({"product_id": ["a", "b"], "x": [1.0, 2.0]}).to_parquet(folder / "e.parquet")
    wh.create_parquet_view(path, "emb", folder / "e.parquet")
    with wh.connect(path) as con:
        assert con.execute('select sum(x) from "emb"').fetchall()[0][0] == 3.0
