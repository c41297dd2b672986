import multiprocessing as mp

import pandas as pd
import pytest

from fashion_pipeline.core import warehouse as wh
from fashion_pipeline.core.model_store import ModelNotFoundError, ModelStore
from fashion_pipeline.resources.model_store import ModelStoreResource


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


def test_model_store_retention_keeps_the_published_and_the_newest_versions(tmp_path):
    store = ModelStore(tmp_path / "models", keep_versions=2)
    v = [store.save("price", {"w": 1}, {}, {})]
    store.publish("price", v[0])
    v += [store.save("price", {"w": i}, {}, {}) for i in (2, 3, 4)]       # v[1] falls out at the 4th save
    other = [store.save("other", {"w": i}, {}, {}) for i in (1, 2, 3)]    # each name has its own versions
    assert store.versions("price") == [v[0], v[2], v[3]]
    assert store.versions("other") == other[1:]
    assert store.load("price")[0] == {"w": 1}                             # the published one still serves
    assert sorted(p.name for p in (tmp_path / "models" / "price").iterdir()) == sorted([v[0], v[2], v[3], "PUBLISHED"])
    store.publish("price", v[3])
    files_v = store.save_files("price", lambda d: (d / "index.bin").write_bytes(b"x"), {}, {})
    assert store.versions("price") == [v[3], files_v]                     # save_files prunes too; v[0] is no longer published
    assert store.prune("price", keep=1) == []                             # the published v[3] stays with keep=1


def test_model_store_prune_by_hand_and_default_keeps_everything(tmp_path):
    store = ModelStore(tmp_path / "models")
    saved = [store.save("m", {"i": i}, {}, {}) for i in range(5)]
    assert store.versions("m") == saved                                   # no keep_versions: nothing removed
    store.publish("m", saved[1])
    assert store.prune("m", keep=2) == [saved[0], saved[2]]
    assert store.versions("m") == [saved[1], saved[3], saved[4]] and store.load("m")[0] == {"i": 1}
    assert store.prune("m", keep=2) == []
    with pytest.raises(ValueError, match="at least 1"):
        store.prune("m", keep=0)
    with pytest.raises(ValueError, match="at least 1"):
        ModelStore(tmp_path / "models", keep_versions=0)


def test_retention_races_with_another_process_never_fail_a_save(tmp_path, monkeypatch, caplog):
    store = ModelStore(tmp_path, keep_versions=1)
    v1 = store.save("m", {"i": 1}, {}, {})
    listed = store.versions
    # another process removed "ghost" between this one's listing and its rename: skipped, not raised
    monkeypatch.setattr(store, "versions", lambda name: ["20000101T000000-000000", *listed(name)])
    v2 = store.save("m", {"i": 2}, {}, {})
    monkeypatch.undo()
    assert store.versions("m") == [v2] and not (tmp_path / "m" / v1).exists()
    assert store.prune("m", keep=1) == []

    def failing(name, keep):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(store, "prune", failing)  # a removal that fails: the save stands, the log says why
    with caplog.at_level("WARNING", logger="fashion_pipeline.core.model_store"):
        v3 = store.save("m", {"i": 3}, {}, {})
    assert store.load("m")[0] == {"i": 3} and v3 in store.versions("m")
    assert "could not remove old versions of m: read-only folder" in caplog.text


def test_model_store_resource_passes_its_retention_on(tmp_path):
    bounded = ModelStoreResource(root=str(tmp_path / "a"), keep_versions=1).store()
    kept = [bounded.save("m", {"i": i}, {}, {}) for i in range(3)]
    assert bounded.versions("m") == kept[-1:]
    unbounded = ModelStoreResource(root=str(tmp_path / "b"), keep_versions=None).store()
    assert [unbounded.save("m", {"i": i}, {}, {}) for i in range(5)] == unbounded.versions("m")
    default = ModelStoreResource(root=str(tmp_path / "c")).store()
    saved = [default.save("m", {"i": i}, {}, {}) for i in range(5)]
    assert default.versions("m") == saved[-3:]                             # the documented default: 3


def test_model_store_removals_show_in_the_dagster_run_log(tmp_path):
    import dagster as dg

    @dg.asset
    def two_saves(model_store: ModelStoreResource) -> None:
        store = model_store.store()
        for i in range(2):
            store.save("m", {"i": i}, {}, {})

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([two_saves], instance=instance,
                            resources={"model_store": ModelStoreResource(root=str(tmp_path), keep_versions=1)})
    messages = [r.user_message for r in instance.all_logs(result.run_id)]
    [removed] = [m for m in messages if "removed 1 old version(s) of m" in m]
    assert ModelStore(tmp_path).versions("m")[0] in removed.split("kept ")[1]


def test_a_parquet_view_is_queryable_even_with_a_quote_in_its_path(tmp_path):
    path = tmp_path / "w.duckdb"
    folder = tmp_path / "it's here"
    folder.mkdir()
    pd.DataFrame({"product_id": ["a", "b"], "x": [1.0, 2.0]}).to_parquet(folder / "e.parquet")
    wh.create_parquet_view(path, "emb", folder / "e.parquet")
    with wh.connect(path) as con:
        assert con.execute('select sum(x) from "emb"').fetchall()[0][0] == 3.0
