"""Damaged generated files: model artefacts and atomically written files are checked, and
damage is a clear error or a skip to the previous good version — never a wrong model served.

Policy (core/model_store.py): a damaged explicitly requested or PUBLISHED version raises
ModelCorruptError (scoring must not silently switch models); with nothing published, "latest"
is the newest version that verifies.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fashion_pipeline.core.atomic import (
    CorruptFileError, atomic_output, atomic_write_json, atomic_write_parquet, read_parquet_checked,
)
from fashion_pipeline.core.model_store import ModelCorruptError, ModelNotFoundError, ModelStore


def _two_versions(tmp_path):
    store = ModelStore(tmp_path / "models")
    v1 = store.save("price", {"w": np.arange(1000.0)}, {"r2": 0.5}, {"features": ["a"]})
    v2 = store.save("price", {"w": np.arange(1000.0) * 2}, {"r2": 0.6}, {"features": ["a"]})
    return store, v1, v2


def _artefact(store, version):
    return store.root / "price" / version / "model.pkl"


def test_versions_sort_in_save_order_even_within_one_second(tmp_path):
    store = ModelStore(tmp_path / "models")
    saved = [store.save("m", {"i": i}, {}, {}) for i in range(20)]
    assert store.versions("m") == saved
    assert store.load("m")[0] == {"i": 19}


@settings(max_examples=30, deadline=None)
@given(cut=st.floats(0.0, 0.999))
def test_truncated_latest_artefact_is_skipped_to_the_previous_good_version(tmp_path_factory, cut):
    store, v1, v2 = _two_versions(tmp_path_factory.mktemp("ms"))
    path = _artefact(store, v2)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    model, info = store.load("price")
    assert info["version"] == v1 and (model["w"] == np.arange(1000.0)).all()
    with pytest.raises(ModelCorruptError, match="checksum mismatch"):
        store.load("price", v2)


def test_a_flipped_byte_is_caught_by_the_checksum_not_unpickled(tmp_path):
    store, v1, v2 = _two_versions(tmp_path)
    path = _artefact(store, v2)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01                               # may still unpickle, into silently wrong weights
    path.write_bytes(bytes(data))
    with pytest.raises(ModelCorruptError, match="checksum mismatch"):
        store.verify("price", v2)
    assert store.load("price")[1]["version"] == v1


def test_a_damaged_published_version_is_a_clear_error_not_a_silent_switch(tmp_path):
    store, v1, v2 = _two_versions(tmp_path)
    store.publish("price", v2)
    _artefact(store, v2).write_bytes(b"")
    with pytest.raises(ModelCorruptError, match=f"{v2}.*damaged"):
        store.load("price")
    with pytest.raises(ModelCorruptError):
        store.publish("price", v2)                             # refuses to (re)publish a damaged version
    store.publish("price", v1)
    assert store.load("price")[1]["version"] == v1


@pytest.mark.parametrize("damage", [b"", b"{not json", b"[]", b'{"version": "other"}', b"\xff\xfe\x00"])
def test_bad_info_json_is_a_clear_error_and_latest_skips_it(tmp_path, damage):
    store, v1, v2 = _two_versions(tmp_path)
    (store.root / "price" / v2 / "info.json").write_bytes(damage)
    with pytest.raises(ModelCorruptError, match="info.json"):
        store.info("price", v2)
    assert store.load("price")[1]["version"] == v1
    # What a retrain keeps training, with nothing published: the newest candidate that is readable.
    assert store.published_or_latest("price") == (store.info("price", v1), False)


def test_every_version_damaged_says_so(tmp_path):
    store, v1, v2 = _two_versions(tmp_path)
    for v in (v1, v2):
        _artefact(store, v).unlink()
    with pytest.raises(ModelCorruptError, match="every saved version of 'price' is damaged"):
        store.load("price")
    for v in (v1, v2):
        (store.root / "price" / v / "info.json").write_bytes(b"{not json")
    with pytest.raises(ModelCorruptError, match="every saved version of 'price' is damaged"):
        store.published_or_latest("price")
    assert ModelStore(tmp_path / "empty").published_or_latest("price") == (None, False)
    with pytest.raises(ModelNotFoundError):
        ModelStore(tmp_path / "empty").load("price")


# ---------------------------------------------------------------- generic atomic files

def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "cache" / "entry.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in target.parent.iterdir()] == ["entry.json"]


@settings(max_examples=25, deadline=None)
@given(cut=st.floats(0.0, 0.99))
def test_truncated_parquet_is_a_corrupt_file_error_naming_it(tmp_path_factory, cut):
    path = tmp_path_factory.mktemp("pq") / "emb.parquet"
    atomic_write_parquet(pd.DataFrame({"product_id": ["a", "b"], "x": [1.0, 2.0]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(CorruptFileError, match="emb.parquet"):
        read_parquet_checked(path, ["product_id"])


def test_parquet_missing_a_required_column_is_a_corrupt_file_error(tmp_path):
    path = tmp_path / "emb.parquet"
    atomic_write_parquet(pd.DataFrame({"product_id": ["a"]}), path)
    assert read_parquet_checked(path, ["product_id"]).num_rows == 1
    with pytest.raises(CorruptFileError, match="text_embedding"):
        read_parquet_checked(path, ["product_id", "text_embedding"])


# ---------------------------------------------------------------- the warehouse file itself

@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_warehouse_file_stops_the_step_naming_it_and_is_never_replaced_silently(tmp_path, damage):
    from fashion_pipeline.core import warehouse as wh
    from fashion_pipeline_tests.conftest import SAMPLE_ROOT
    from fashion_pipeline_tests.fixtures.runs import materialize

    var = tmp_path / "var"
    path = var / "warehouse.duckdb"
    wh.write_table(path, "keep", pd.DataFrame({"i": np.arange(100_000)}))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3] if damage == "truncated" else b"\x00garbage" * 500)
    before = path.read_bytes()
    result = materialize(["hm_articles_raw"], SAMPLE_ROOT, var, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    message = failure.event_specific_data.error.to_string()
    assert str(path) in message and "IOException" in message
    assert path.read_bytes() == before       # left as found, for inspection; derived data: move it aside and re-run


def test_a_version_saved_as_joblib_by_an_earlier_release_still_loads_and_new_ones_are_pickles(tmp_path):
    import joblib

    from fashion_pipeline.core.atomic import sha256_file

    store = ModelStore(tmp_path)
    old = tmp_path / "price" / "20260101T000000-000001"
    old.mkdir(parents=True)
    joblib.dump({"weights": [1.0, 2.0]}, old / "model.joblib")
    (old / "info.json").write_text(json.dumps({  # the info.json such a release wrote: no "artefact" key
        "name": "price", "version": old.name, "metrics": {}, "features_spec": {},
        "artefact_sha256": sha256_file(old / "model.joblib")}))
    assert store.load("price", old.name)[0] == {"weights": [1.0, 2.0]}
    new = store.save("price", {"weights": [3.0]}, {}, {})
    assert sorted(p.name for p in (tmp_path / "price" / new).iterdir()) == ["info.json", "model.pkl"]
    assert store.load("price")[0] == {"weights": [3.0]}  # nothing published: the newest intact one
    (old / "model.joblib").write_bytes(b"not a joblib file")
    with pytest.raises(ModelCorruptError):  # its checksum still guards it
        store.load("price", old.name)
