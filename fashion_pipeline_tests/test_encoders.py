"""Core encoder tests: image decoding, text building, cache, Parquet IO and the embedding driver,
with the real offline encoders (EfficientNet-Lite0 + all-MiniLM-L6-v2) on real sample photos."""

from __future__ import annotations

import os
import sqlite3

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fashion_pipeline.core.encoders import (
    EncoderConfigError,
    build_backend,
    embed_products,
    read_embedding_metadata,
    read_embeddings,
)
from fashion_pipeline.core.encoders import images as imgs
from fashion_pipeline.core.encoders.base import cpu_has_native_bf16
from fashion_pipeline.core.encoders.cache import EmbeddingCache, cache_file, sweep_cache
from fashion_pipeline.core.encoders.io import EmbeddingsWriter, content_digest, file_content_digest
from fashion_pipeline.core.warehouse import create_parquet_view
from fashion_pipeline.core.encoders.product_text import build_product_text, build_texts
from fashion_pipeline_tests.fixtures.encoders import damaged
from fashion_pipeline_tests.fixtures.clock import DAY, Clock

# ---------------------------------------------------------------- images


def test_letterbox_keeps_the_whole_photo_pads_white_and_normalises_per_channel():
    from fashion_pipeline.core.encoders.base import LetterboxTransform

    tf = LetterboxTransform(32, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    # A solid 40x80 portrait photo scales to 16x32 and sits in columns 8..23 of the 32x32 square.
    px = tf(Image.new("RGB", (40, 80), (255, 0, 51)))
    assert px.shape == (3, 32, 32) and px.dtype.is_floating_point and px.is_contiguous()
    photo = np.array([1.0, -1.0, 0.2])  # ((255, 0, 51) / 255 - mean) / std
    white = np.array([1.0, 3.0, 1.0])  # ((255, 255, 255) / 255 - mean) / std
    arr = px.numpy()
    np.testing.assert_allclose(arr[:, :, 8:24], np.broadcast_to(photo[:, None, None], (3, 32, 16)), atol=1e-6)
    np.testing.assert_allclose(arr[:, :, :8], np.broadcast_to(white[:, None, None], (3, 32, 8)), atol=1e-6)
    np.testing.assert_allclose(arr[:, :, 24:], np.broadcast_to(white[:, None, None], (3, 32, 8)), atol=1e-6)


@pytest.fixture(scope="module")
def photos():
    return damaged.real_images(6, hm=2)


def test_real_jpeg_decodes_to_rgb_without_conversion(photos):
    raw = imgs.read_image_bytes(photos[0])
    im, conv, err = imgs.decode_image(raw.data)
    assert err is None and conv is None
    assert im.mode == "RGB" and im.size == Image.open(photos[0]).size
    assert len(raw.sha256) == 64


def test_truncated_and_garbage_files_are_reported_not_raised(photos, tmp_path):
    for bad in (damaged.truncated_copy(photos[0], tmp_path / "t.jpg"), damaged.garbage_file(tmp_path / "g.jpg")):
        im, conv, err = imgs.decode_image(imgs.read_image_bytes(bad).data)
        assert im is None and err == imgs.CORRUPT_IMAGE


def test_missing_paths_have_distinct_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert imgs.read_image_bytes(None).error == imgs.NO_IMAGE_PATH
    assert imgs.read_image_bytes(float("nan")).error == imgs.NO_IMAGE_PATH
    assert imgs.read_image_bytes(pd.NA).error == imgs.NO_IMAGE_PATH
    assert imgs.read_image_bytes(tmp_path / "nope.jpg").error == imgs.FILE_NOT_FOUND
    assert imgs.read_image_bytes(tmp_path / "empty.jpg").error == imgs.EMPTY_FILE
    assert imgs.read_image_bytes(tmp_path).error == imgs.UNREADABLE_FILE  # a directory


def test_grayscale_and_cmyk_are_converted_to_rgb_and_counted(photos, tmp_path):
    original = np.asarray(Image.open(photos[1]).convert("RGB"), dtype=np.float32)
    g = imgs.decode_image(damaged.grayscale_copy(photos[1], tmp_path / "g.jpg").read_bytes())
    c = imgs.decode_image(damaged.cmyk_copy(photos[1], tmp_path / "c.jpg").read_bytes())
    assert g[1] == imgs.CONVERTED_GRAYSCALE and g[0].mode == "RGB"
    assert c[1] == imgs.CONVERTED_CMYK and c[0].mode == "RGB"
    # The CMYK round trip keeps the colours (JPEG loss only), i.e. it is not inverted or garbled.
    assert np.abs(np.asarray(c[0], dtype=np.float32) - original).mean() < 12


def test_transparent_pixels_become_white_not_black(photos, tmp_path):
    png = damaged.alpha_png_copy(photos[2], tmp_path / "a.png")
    im, conv, err = imgs.decode_image(png.read_bytes())
    assert err is None and conv == imgs.CONVERTED_ALPHA and im.mode == "RGB"
    arr = np.asarray(im)
    assert (arr[:, : arr.shape[1] // 2] == 255).all()  # transparent half composited on white
    pal = Image.open(png).convert("RGB").quantize(16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert imgs.decode_image((tmp_path / "p.png").read_bytes())[1] == imgs.CONVERTED_ALPHA


# ---------------------------------------------------------------- text


def test_product_text_puts_attributes_before_description_and_skips_empties():
    text = build_product_text(
        "Nike Men Blue Tee",
        "  Soft   cotton tee. ",
        {"brand": "Nike", "materials": '["cotton", "elastane"]', "fit": None, "pattern": float("nan"), "colour": ""},
    )
    assert text == "Nike Men Blue Tee. brand: Nike; materials: cotton, elastane. Soft cotton tee."
    assert build_product_text("", None, {"fit": None}) == ""
    assert build_product_text(None, "desc only") == "desc only"


def test_build_texts_uses_attributes_when_available_and_works_without():
    products = pd.DataFrame(
        {"product_id": ["a", "b"], "title": ["Red dress", "Black jeans"], "description": ["", "Slim."],
         "colour": ["Red", None]}
    )
    attrs = pd.DataFrame({"product_id": ["b", "zzz"], "materials": ['["denim"]', '["silk"]'], "fit": ["slim", None],
                          "status": ["ok", "ok"]})
    assert build_texts(products) == ["Red dress. colour: Red", "Black jeans. Slim."]
    assert build_texts(products, attrs) == ["Red dress. colour: Red", "Black jeans. materials: denim; fit: slim. Slim."]
    assert build_texts(products, attrs[["product_id", "status"]]) == build_texts(products)  # no usable columns


# ---------------------------------------------------------------- cache


def test_cache_round_trip_and_corrupt_entries_are_never_served(tmp_path):
    vecs = np.arange(12, dtype=np.float32).reshape(3, 4)
    with EmbeddingCache(tmp_path, "image", "enc-A", 4) as c:
        c.put_many(["k1", "k2", "k3"], vecs)
        assert np.array_equal(c.get_many(["k2"])["k2"], vecs[1])
        # The check can hand over the vectors it read, within a byte budget (here two 16-byte vectors).
        kept: dict = {}
        assert c.validate(["k3", "k1", "k2"], keep=kept, keep_bytes=40) == ({"k1", "k2", "k3"}, 0)
        assert sorted(kept) == ["k1", "k2"] and all(np.array_equal(kept[k], vecs[i]) for i, k in enumerate(kept))
    con = sqlite3.connect(cache_file(tmp_path, "image", "enc-A"))
    con.execute("UPDATE vectors SET vec = ? WHERE key = 'k1'", (np.ones(4, np.float32).tobytes(),))  # checksum mismatch
    con.execute("UPDATE vectors SET vec = ? WHERE key = 'k2'", (b"\x00" * 8,))  # wrong length
    con.commit()
    con.close()
    with EmbeddingCache(tmp_path, "image", "enc-A", 4) as c:
        assert set(c.get_many(["k1", "k2", "k3"])) == {"k3"}
        valid, corrupt = c.validate(["k1", "k2", "k3", "k4"])
        assert valid == {"k3"} and corrupt == 2
        assert len(c) == 1  # corrupt rows deleted so they are recomputed
    with EmbeddingCache(tmp_path, "image", "enc-B", 4) as c:  # another encoder never sees enc-A's vectors
        assert c.get_many(["k3"]) == {}


def test_unreadable_cache_file_is_moved_aside_and_restarted(tmp_path):
    path = cache_file(tmp_path, "text", "enc")
    path.write_bytes(b"not a sqlite database" * 100)
    with EmbeddingCache(tmp_path, "text", "enc", 3) as c:
        assert c.reset_reason and len(c) == 0
        c.put_many(["x"], np.ones((1, 3), np.float32))
    assert list(tmp_path.glob("*.corrupt-*"))


def test_entries_no_run_used_for_the_retention_age_are_swept_and_used_ones_kept(tmp_path):
    clock = Clock()
    with EmbeddingCache(tmp_path, "text", "enc", 4, clock=clock) as c:
        c.put_many(["read", "validated", "rewritten", "stale"], np.ones((4, 4), np.float32))
        clock.t += 20 * DAY
        assert set(c.get_many(["read"])) == {"read"}             # a read stamps the entry
        assert c.validate(["validated"]) == ({"validated"}, 0)   # so does the embedding stage's check
        c.put_many(["rewritten"], np.zeros((1, 4), np.float32))  # and a write
        clock.t += 20 * DAY                                      # 'stale': 40 days unused; the rest 20
        assert c.sweep(28 * DAY) == 1
        assert set(c.get_many(["read", "validated", "rewritten", "stale"])) == {"read", "validated", "rewritten"}
        assert c.sweep(28 * DAY) == 0


def test_opening_a_current_cache_takes_no_write_lock(tmp_path):
    with EmbeddingCache(tmp_path, "text", "enc", 2) as c:
        c.put_many(["k"], np.ones((1, 2), np.float32))
    writer = sqlite3.connect(cache_file(tmp_path, "text", "enc"))
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
    try:
        with EmbeddingCache(tmp_path, "text", "enc", 2) as c:  # would wait 60 s, then move the file aside
            assert c.reset_reason is None and len(c) == 1
    finally:
        writer.rollback()
        writer.close()


def test_a_schema_1_cache_file_is_migrated_in_place_and_its_entries_count_as_used_at_migration(tmp_path):
    path = cache_file(tmp_path, "image", "enc")
    blob = np.arange(3, dtype="<f4").tobytes()
    con = sqlite3.connect(path)  # the layout the cache wrote before last_used existed
    con.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    con.execute("CREATE TABLE vectors (key TEXT PRIMARY KEY, dim INTEGER NOT NULL, checksum TEXT NOT NULL, "
                "vec BLOB NOT NULL)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema", "1"), ("identity", "enc"), ("dim", "3")])
    from fashion_pipeline.core.encoders.cache import vector_checksum
    con.execute("INSERT INTO vectors VALUES ('old', 3, ?, ?)", (vector_checksum(blob), blob))
    con.commit()
    con.close()
    clock = Clock()
    with EmbeddingCache(tmp_path, "image", "enc", 3, clock=clock) as c:
        assert c.reset_reason is None                                # migrated, not moved aside
        clock.t += 27 * DAY
        assert c.sweep(28 * DAY) == 0                                # stamped at the migration, 27 days ago
        assert np.array_equal(c.get_many(["old"])["old"], [0, 1, 2])  # served, and stamped now
    with sqlite3.connect(path) as con:
        assert dict(con.execute("SELECT k, v FROM meta").fetchall())["schema"] == "2"
    clock.t += 27 * DAY
    with EmbeddingCache(tmp_path, "image", "enc", 3, clock=clock) as c:  # reopening re-stamps nothing
        assert c.sweep(28 * DAY) == 0
        clock.t += 2 * DAY
        assert c.sweep(28 * DAY) == 1 and len(c) == 0


def test_sweep_removes_other_encoders_files_unused_for_the_age_and_compacts_a_mostly_swept_file(tmp_path):
    clock = Clock()
    image = EmbeddingCache(tmp_path, "image", "live-image", 256, clock=clock)
    text = EmbeddingCache(tmp_path, "text", "live-text", 4, clock=clock)
    image.put_many([f"k{i}" for i in range(400)], np.ones((400, 256), np.float32))
    with EmbeddingCache(tmp_path, "text", "retired-encoder", 4) as old, \
            EmbeddingCache(tmp_path, "text", "recent-encoder", 4) as recent:
        old.put_many(["x"], np.ones((1, 4), np.float32))
        recent.put_many(["y"], np.ones((1, 4), np.float32))
    retired, other = cache_file(tmp_path, "text", "retired-encoder"), cache_file(tmp_path, "text", "recent-encoder")
    aside = tmp_path / f"{cache_file(tmp_path, 'image', 'live-image').name}.corrupt-1700000000"
    aside.write_bytes(b"moved aside at some point")
    clock.t += 29 * DAY  # the sweep's time; file ages below count back from it
    for path, age_days in [(retired, 40), (other, 3), (aside, 30)]:
        for part in tmp_path.glob(f"{path.name}*"):
            os.utime(part, (clock.t - age_days * DAY, clock.t - age_days * DAY))
    image.get_many([f"k{i}" for i in range(40)])  # 40 of 400 image vectors used again
    report = sweep_cache([image, text], 28 * DAY)
    assert report.entries_removed == {image.path.name: 360, text.path.name: 0}
    assert sorted(report.files_removed) == sorted([retired.name, aside.name])
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert left == sorted([image.path.name, text.path.name, other.name])
    # 360 of 400 1 KB vectors gone, and the file compacted (it held 400 KB of vectors) with its log emptied
    assert image.path.stat().st_size < 120_000 and not Path(f"{image.path}-wal").stat().st_size
    assert report.bytes_after < report.bytes_before
    assert len(image) == 40 and set(image.get_many(["k0", "k39", "k40"])) == {"k0", "k39"}
    image.close()
    text.close()


# ---------------------------------------------------------------- Parquet IO


def test_parquet_round_trip_with_nulls_and_duckdb_view(tmp_path):
    path = tmp_path / "e.parquet"
    w = EmbeddingsWriter(path, {"image_dim": "3", "text_dim": "2", "backend": "test"})
    img = np.array([[1, 2, 3], [0, 0, 0]], np.float32)
    txt = np.array([[0.5, 0.5], [1, 0]], np.float32)
    w.write(["a", "b"], img, [True, False], txt, [True, True], ["ok", "file_not_found"], ["ok", "ok"])
    w.write(["c"], np.zeros((1, 3), np.float32), [False], np.zeros((1, 2), np.float32), [False], ["x"], ["empty_text"])
    w.commit({"rows": "3"})
    ids, image, text = read_embeddings(path)
    assert ids == ["a", "b", "c"]
    assert image.dtype == np.float32 and image.shape == (3, 3) and text.shape == (3, 2)
    assert np.array_equal(image[0], [1, 2, 3]) and np.isnan(image[1:]).all()
    assert np.array_equal(text[1], [1, 0]) and np.isnan(text[2]).all()
    assert read_embedding_metadata(path)["rows"] == "3"
    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    warehouse = tmp_path / "w.duckdb"
    create_parquet_view(warehouse, "product_embeddings", path)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*), count(image_embedding) FROM product_embeddings").fetchone() == (3, 1)


def test_read_embeddings_fills_each_row_group_in_order_and_refuses_a_vector_of_another_width(tmp_path):
    rng = np.random.default_rng(3)
    image, text = rng.standard_normal((7, 4)).astype(np.float32), rng.standard_normal((7, 2)).astype(np.float32)
    ivalid = np.array([1, 1, 0, 1, 1, 1, 0], bool)  # nulls in the first and last of three row groups
    tvalid = np.array([1, 1, 1, 1, 1, 0, 1], bool)
    path = _write(tmp_path / "e.parquet", list("abcdefg"), image, ivalid, text, tvalid, batches=3)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    ids, img, txt = read_embeddings(path)
    assert ids == list("abcdefg")
    assert np.array_equal(img[ivalid], image[ivalid]) and np.isnan(img[~ivalid]).all()
    assert np.array_equal(txt[tvalid], text[tvalid]) and np.isnan(txt[~tvalid]).all()

    # A file whose footer declares 4 image dimensions but holds a 3-wide vector (another writer's).
    bad = tmp_path / "bad.parquet"
    table = pa.table({"product_id": ["a", "b"],
                      "image_embedding": pa.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0]], pa.list_(pa.float32())),
                      "text_embedding": pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))})
    pq.write_table(table.replace_schema_metadata({"image_dim": "4", "text_dim": "2"}), bad)
    with pytest.raises(ValueError, match="1 embeddings do not have the declared dimension 4"):
        read_embeddings(bad)


def _write(path, ids, image, ivalid, text, tvalid, batches=1):
    w = EmbeddingsWriter(path, {"image_dim": str(image.shape[1]), "text_dim": str(text.shape[1])})
    for part in np.array_split(np.arange(len(ids)), batches):
        w.write([ids[i] for i in part], image[part], ivalid[part], text[part], tvalid[part],
                ["ok"] * len(part), ["ok"] * len(part))
    return w.commit()


def test_the_content_digest_in_the_footer_is_the_digest_of_the_vectors_read_back(tmp_path):
    """The writer records, batch by batch, the digest of what read_embeddings returns (null vectors as
    NaN rows, whatever the writer was handed for them), so the model assets can fingerprint the file from
    its footer; a file without the key gets the same digest from its vectors; any changed id or value
    changes it."""
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(7)]
    image, text = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32)
    ivalid, tvalid = np.array([1, 1, 0, 1, 1, 0, 1], bool), np.array([1, 1, 1, 1, 0, 1, 1], bool)
    a = _write(tmp_path / "a.parquet", ids, image, ivalid, text, tvalid, batches=3)
    recorded, how = file_content_digest(a)
    assert how.startswith("recorded") and recorded == read_embedding_metadata(a)["content_digest"]
    assert recorded == content_digest(*read_embeddings(a))
    # Other bytes where a vector is null, other batches: the same file content, the same digest.
    junk = image.copy()
    junk[~ivalid] = 123.0
    assert file_content_digest(_write(tmp_path / "b.parquet", ids, junk, ivalid, text, tvalid, batches=1))[0] == recorded
    # A file without the key (rewritten by another tool): computed from its vectors, the same value.
    table = pq.read_table(a)
    meta = {k: v for k, v in table.schema.metadata.items() if k != b"content_digest"}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "c.parquet")
    assert file_content_digest(tmp_path / "c.parquet") == (recorded, "computed from the vectors (the file records none)")
    changed_value = image.copy()
    changed_value[3, 2] = np.nextafter(changed_value[3, 2], np.float32(np.inf))
    changed_null = ivalid.copy()
    changed_null[0] = False
    for name, args in {"value": (ids, changed_value, ivalid, text, tvalid),
                       "null": (ids, image, changed_null, text, tvalid),
                       "id": (["q0", *ids[1:]], image, ivalid, text, tvalid),
                       "order": (ids[::-1], image[::-1], ivalid[::-1], text[::-1], tvalid[::-1])}.items():
        assert file_content_digest(_write(tmp_path / f"{name}.parquet", *args))[0] != recorded, name


def test_an_unchanged_model_asset_reads_the_footer_not_the_vectors(tmp_path, monkeypatch):
    """CatalogueEmbeddings: the fingerprint comes from the footer; the vectors are read on first use only."""
    from fashion_pipeline import embedding_inputs

    rng = np.random.default_rng(1)
    path = _write(tmp_path / "e.parquet", ["a", "b"], rng.normal(size=(2, 4)).astype(np.float32), np.ones(2, bool),
                  rng.normal(size=(2, 2)).astype(np.float32), np.ones(2, bool))
    reads = []
    monkeypatch.setattr(embedding_inputs, "read_embeddings", lambda p: reads.append(p) or read_embeddings(p))
    emb = embedding_inputs.CatalogueEmbeddings(path, None)
    assert emb.digest() == read_embedding_metadata(path)["content_digest"] and reads == []
    assert emb.missing(pd.DataFrame({"product_id": ["a", "z"]})) == 1 and reads == []  # ids alone
    ids, image, _ = emb.release()
    assert ids == ["a", "b"] and image.shape == (2, 4) and len(reads) == 1
    with pytest.raises(RuntimeError, match="already handed over"):
        emb.arrays
    # Fingerprinted from the footer, then the file is replaced before the vectors are read: a clear error,
    # not a model trained on other vectors than its fingerprint names.
    emb = embedding_inputs.CatalogueEmbeddings(path, None)
    emb.digest()
    _write(path, ["a", "b"], rng.normal(size=(2, 4)).astype(np.float32), np.ones(2, bool),
           rng.normal(size=(2, 2)).astype(np.float32), np.ones(2, bool))
    with pytest.raises(RuntimeError, match="changed since this step fingerprinted it"):
        emb.arrays



def test_a_file_without_the_footer_digest_is_read_once(tmp_path, monkeypatch):
    """A file rewritten by another tool has no content_digest: the digest comes from its vectors, and the
    vectors read for it are the ones the asset then uses (one read, not one per use)."""
    from fashion_pipeline import embedding_inputs
    from fashion_pipeline.core.encoders import io as emb_io

    rng = np.random.default_rng(2)
    path = _write(tmp_path / "e.parquet", ["a", "b", "c"], rng.normal(size=(3, 4)).astype(np.float32),
                  np.array([1, 0, 1], bool), rng.normal(size=(3, 2)).astype(np.float32), np.ones(3, bool))
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata(
        {k: v for k, v in table.schema.metadata.items() if k != b"content_digest"}), path)
    reads = []
    counted = emb_io.read_embeddings
    monkeypatch.setattr(emb_io, "read_embeddings", lambda p: reads.append(p) or counted(p))
    monkeypatch.setattr(embedding_inputs, "read_embeddings", emb_io.read_embeddings)
    emb = embedding_inputs.CatalogueEmbeddings(path, None)
    assert emb.digest() == content_digest(*counted(path))
    image, text, no_row = emb.aligned(pd.DataFrame({"product_id": ["c", "a"]}))
    assert no_row == 0 and image.shape == (2, 4) and len(reads) == 1

def test_aborted_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "e.parquet"
    w = EmbeddingsWriter(path, {"image_dim": "1", "text_dim": "1"})
    w.write(["a"], np.ones((1, 1), np.float32), [True], np.ones((1, 1), np.float32), [True], ["ok"], ["ok"])
    w.commit()
    w2 = EmbeddingsWriter(path, {"image_dim": "1", "text_dim": "1"})
    w2.write(["zzz"], np.ones((1, 1), np.float32), [True], np.ones((1, 1), np.float32), [True], ["ok"], ["ok"])
    w2.abort()
    assert read_embeddings(path)[0] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.parquet"]


# ---------------------------------------------------------------- real offline encoders end to end


@pytest.fixture(scope="module")
def offline():
    return build_backend("offline", resolution=64)


@pytest.fixture()
def catalogue(tmp_path):
    """Real photos (Kaggle + H&M) plus damaged variants, as a products frame."""
    real = damaged.real_images(8, hm=2)
    d = tmp_path / "img"
    d.mkdir()
    rows = [(f"p{i}", f"Real product {i}", "", str(p)) for i, p in enumerate(real)]
    rows += [
        ("dup", "Same photo as p0", "", str(damaged.copy(real[0], d / "dup.jpg"))),
        ("trunc", "Truncated photo", "", str(damaged.truncated_copy(real[1], d / "t.jpg"))),
        ("gray", "Grey photo", "", str(damaged.grayscale_copy(real[2], d / "g.jpg"))),
        ("cmyk", "CMYK photo", "", str(damaged.cmyk_copy(real[3], d / "c.jpg"))),
        ("alpha", "Alpha photo", "", str(damaged.alpha_png_copy(real[4], d / "a.png"))),
        ("noimg", "No photo", "a description", None),
        ("gone", "Deleted photo", "", str(d / "deleted.jpg")),
        ("notext", "", "   ", str(real[5])),
    ]
    return pd.DataFrame(rows, columns=["product_id", "title", "description", "image_path"])


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_offline_backend_declares_real_models(offline):
    meta = offline.describe()
    assert meta["backend"] == "offline" and meta["aligned"] == "false"
    assert meta["image_dim"] == "1280" and meta["text_dim"] == "384"
    assert "efficientnet-lite0" in meta["image_model"] and "all-MiniLM-L6-v2" in meta["text_model"]


def test_offline_text_embeddings_are_semantic(offline):
    v = offline.encode_text_batch(["slim fit blue denim jeans", "dark blue skinny jeans for men", "gold wrist watch"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.2


def test_short_texts_batch_wider_and_encode_as_they_do_one_at_a_time(offline, monkeypatch):
    """Titles go to sentence-transformers in wider batches than descriptions (fewer, bigger forward
    passes), and a text's vector does not depend on the batch it was encoded in."""
    import fashion_pipeline.core.encoders.offline as offline_module

    titles = ["Men Navy Blue Slim Fit Jeans", "Women Red Floral Dress", "Unisex Black Sports Cap",
              "Girls White Sneakers"] * 40
    descriptions = ["Loose-fitting top in a soft cotton jersey with a rounded neckline, dropped shoulders "
                    "and long sleeves with ribbed cuffs. " * 6] * 40
    sizes = []
    real_encode = offline._text_model.encode
    monkeypatch.setattr(offline._text_model, "encode",
                        lambda texts, batch_size, **kw: sizes.append(batch_size) or real_encode(texts, batch_size=batch_size, **kw))
    wide = offline.encode_text_batch(titles)
    offline.encode_text_batch(descriptions)
    assert sizes[0] >= 4 * sizes[1] and sizes[1] == offline_module._TEXT_INNER_BATCH
    alone = np.vstack([offline.encode_text_batch([t]) for t in titles[:4]])
    assert min(_cos(a, b) for a, b in zip(wide[:4], alone)) > 0.999


def test_the_listing_embedder_encodes_short_titles_in_wider_chunks_than_long_texts(monkeypatch):
    from fashion_pipeline.core import scoring
    from fashion_pipeline.core.encoders.offline import OfflineBackend

    chunks = []
    real = OfflineBackend.encode_text_batch
    monkeypatch.setattr(OfflineBackend, "encode_text_batch",
                        lambda self, texts: chunks.append(len(texts)) or real(self, texts))
    embed = scoring.encoder_embedder("offline", batch_size=32)
    titles = [f"Men Navy Blue Slim Fit Jeans {i}" for i in range(150)]
    long_texts = [f"Loose-fitting top in a soft cotton jersey, number {i}. " * 8 for i in range(64)]
    chunks.clear()
    titles_vecs = embed.encode_texts(titles)
    title_chunks = list(chunks)
    chunks.clear()
    embed.encode_texts(long_texts)
    assert max(title_chunks) > 32 and len(title_chunks) < 150 / 32  # fewer, wider calls for titles
    assert chunks == [32, 32]  # long texts keep the configured batch
    assert np.isfinite(titles_vecs).all() and titles_vecs.shape == (150, 384)


def test_embed_products_counts_every_kind_of_bad_input(offline, catalogue, tmp_path):
    out = tmp_path / "out" / "e.parquet"
    rep = embed_products(catalogue, offline, out, tmp_path / "cache", image_batch_size=4, loader_workers=1, chunk_rows=5)
    ids, image, text = read_embeddings(out)
    assert ids == catalogue.product_id.tolist()
    status = dict(zip(ids, pq.read_table(out, columns=["image_status"]).column(0).to_pylist()))
    assert rep.image.failed_rows == {"corrupt_image": 1, "no_image_path": 1, "file_not_found": 1}
    assert status["trunc"] == "corrupt_image" and status["noimg"] == "no_image_path" and status["gone"] == "file_not_found"
    assert rep.image.converted_rows == {"grayscale": 1, "cmyk": 1, "alpha": 1}
    assert rep.text.failed_rows == {"empty_text": 1}
    row = {pid: i for i, pid in enumerate(ids)}
    for pid in ("trunc", "noimg", "gone"):
        assert np.isnan(image[row[pid]]).all()
        assert not np.isnan(text[row[pid]]).any()  # text still embedded for products without an image
    assert np.isnan(text[row["notext"]]).all() and not np.isnan(image[row["notext"]]).any()
    # identical bytes -> one encode, identical vectors
    encoded = catalogue[~catalogue.product_id.isin(["trunc", "noimg", "gone"])]
    distinct = {imgs.read_image_bytes(path).sha256 for path in encoded.image_path}
    assert rep.image.encoded_rows == len(encoded) and rep.image.unique_encoded == len(distinct) < len(encoded)
    assert np.array_equal(image[row["dup"]], image[row["p0"]])
    # converted images still look like their originals to the model
    assert _cos(image[row["cmyk"]], image[row["p3"]]) > 0.9
    assert _cos(image[row["gray"]], image[row["p2"]]) > 0.7
    meta = read_embedding_metadata(out)
    assert meta["image_dim"] == "1280" and meta["backend"] == "offline" and meta["aligned"] == "false"
    assert pq.ParquetFile(out).metadata.num_row_groups == 4  # 18 rows in chunks of 5


def test_incremental_run_encodes_only_new_products(offline, catalogue, tmp_path):
    out, cache = tmp_path / "e.parquet", tmp_path / "cache"
    base = catalogue[catalogue.product_id.str.startswith("p")]
    embed_products(base.iloc[:7], offline, out, cache, loader_workers=0)
    _, first_img, first_txt = read_embeddings(out)
    rep = embed_products(base, offline, out, cache, loader_workers=0)
    assert rep.image.reused_rows == 7 and rep.image.encoded_rows == 3 and rep.image.unique_encoded == 3
    assert rep.text.reused_rows == 7 and rep.text.unique_encoded == 3
    ids, img, txt = read_embeddings(out)
    assert len(ids) == 10
    assert np.allclose(img[:7], first_img, atol=1e-5) and np.allclose(txt[:7], first_txt, atol=1e-5)
    # The cached vectors the run checked are written from what the check read, or, past the budget held
    # between the two (here 5 image vectors' worth, none for texts), read again: the same file either way.
    budget = 5 * 1280 * 4
    embed_products(base, offline, tmp_path / "budget.parquet", cache, loader_workers=0, keep_cached_bytes=budget)
    again = read_embeddings(tmp_path / "budget.parquet")
    assert again[0] == ids and np.array_equal(again[1], img, equal_nan=True) and np.array_equal(again[2], txt, equal_nan=True)


def test_changed_encoder_recomputes_everything(offline, catalogue, tmp_path):
    base = catalogue[catalogue.product_id.str.startswith("p")].iloc[:4]
    embed_products(base, offline, tmp_path / "a.parquet", tmp_path / "cache", loader_workers=0)
    other = build_backend("offline", resolution=96)
    assert other.image.identity != offline.image.identity
    rep = embed_products(base, other, tmp_path / "b.parquet", tmp_path / "cache", loader_workers=0)
    assert rep.image.reused_rows == 0 and rep.image.unique_encoded == 4
    _, a, _ = read_embeddings(tmp_path / "a.parquet")
    _, b, _ = read_embeddings(tmp_path / "b.parquet")
    assert not np.allclose(a, b)


def test_corrupted_cache_entry_is_recomputed_not_served(offline, catalogue, tmp_path):
    base = catalogue[catalogue.product_id.str.startswith("p")].iloc[:3]
    out, cache = tmp_path / "e.parquet", tmp_path / "cache"
    embed_products(base, offline, out, cache, loader_workers=0)
    _, good, _ = read_embeddings(out)
    con = sqlite3.connect(cache_file(cache, "image", offline.image.identity))
    key = imgs.read_image_bytes(base.image_path.iloc[1]).sha256
    con.execute("UPDATE vectors SET vec = ? WHERE key = ?", (np.zeros(1280, np.float32).tobytes(), key))
    con.commit()
    con.close()
    rep = embed_products(base, offline, out, cache, loader_workers=0)
    assert rep.image.corrupt_cache_entries == 1 and rep.image.unique_encoded == 1 and rep.image.reused_rows == 2
    _, again, _ = read_embeddings(out)
    assert np.allclose(again, good, atol=1e-5)


def test_bad_configuration_is_a_clear_error(catalogue, tmp_path):
    with pytest.raises(EncoderConfigError, match="'nonsense'"):
        build_backend("nonsense")
    with pytest.raises(EncoderConfigError, match="resolution"):
        build_backend("offline", resolution=100)
    with pytest.raises(EncoderConfigError, match="fp16"):
        build_backend("offline", precision="fp16")


def test_duplicate_product_ids_are_refused(offline, catalogue, tmp_path):
    dup = pd.concat([catalogue.iloc[:2], catalogue.iloc[:1]])
    with pytest.raises(ValueError, match="duplicated product_id"):
        embed_products(dup, offline, tmp_path / "e.parquet", tmp_path / "c")


def test_precision_auto_follows_the_hardware_and_refuses_what_it_cannot_do(monkeypatch):
    from fashion_pipeline.core.encoders import base

    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: True)
    assert base.resolve_precision("auto", "cpu") == "bf16"
    assert base.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: False)
    assert base.resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(EncoderConfigError, match="native bf16"):
        base.resolve_precision("bf16", "cpu")
    with pytest.raises(EncoderConfigError, match="fp16"):
        base.resolve_precision("fp16", "cpu")


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")
def test_cpu_bf16_embeddings_match_fp32_and_are_cached_apart(catalogue):
    """bf16 autocast on CPU must give the same embeddings as fp32 up to rounding, and a different
    encoder identity (so a cache filled in one precision is never served to the other)."""
    fp32 = build_backend("offline", resolution=64, precision="fp32")
    bf16 = build_backend("offline", resolution=64, precision="bf16")
    assert fp32.text.identity != bf16.text.identity and fp32.image.identity != bf16.image.identity
    texts = ["slim fit blue denim jeans with five pockets", "gold wrist watch", "cotton summer dress"]
    a, b = fp32.encode_text_batch(texts), bf16.encode_text_batch(texts)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert min(_cos(x, y) for x, y in zip(a, b)) > 0.99
    import torch

    tf = fp32.image_transform()
    px = torch.stack([tf(Image.open(p).convert("RGB")) for p in damaged.real_images(3, hm=1)])
    ia, ib = fp32.encode_image_batch(px), bf16.encode_image_batch(px)
    assert ib.dtype == np.float32 and min(_cos(x, y) for x, y in zip(ia, ib)) > 0.98


def test_a_rerun_keys_unchanged_photos_from_the_memo_and_reads_new_or_changed_ones(offline, catalogue, tmp_path,
                                                                                  monkeypatch):
    """product_embeddings keys each photo by the sha256 of its bytes; with a key memo a re-run takes the
    keys of files whose size and mtime are unchanged and reads only the others (an unreadable or missing
    photo is never remembered). The vectors are those of a run without the memo."""
    import shutil

    from fashion_pipeline.core.encoders import pipeline
    from fashion_pipeline.core.readers.file_memo import FileMemo

    kw = dict(image_batch_size=4, loader_workers=1)
    embed_products(catalogue, offline, tmp_path / "plain.parquet", tmp_path / "cache0", **kw)
    memo_file = tmp_path / "keys.parquet"
    first = FileMemo(memo_file, "v")
    embed_products(catalogue, offline, tmp_path / "e1.parquet", tmp_path / "cache", key_memo=first, **kw)
    first.save()
    present = [p for p in catalogue["image_path"] if isinstance(p, str) and os.path.exists(p)]
    assert first.counts()["files_read"] == len(present) == 16 and first.counts()["files_reused"] == 0
    for a, b in zip(read_embeddings(tmp_path / "plain.parquet")[1:], read_embeddings(tmp_path / "e1.parquet")[1:]):
        np.testing.assert_array_equal(a, b)

    path = dict(zip(catalogue["product_id"], catalogue["image_path"]))
    shutil.copyfile(path["p1"], path["dup"])  # 'dup' now holds p1's photo (other bytes, other size)
    read = []
    original = pipeline.read_image_bytes
    monkeypatch.setattr(pipeline, "read_image_bytes", lambda p: read.append(str(p)) or original(p))
    second = FileMemo(memo_file, "v")
    embed_products(catalogue, offline, tmp_path / "e2.parquet", tmp_path / "cache", key_memo=second, **kw)
    assert second.counts()["files_reused"] == 15 and second.counts()["files_read"] == 1
    # Read to be keyed (in this process; decoding happens in the loader's worker): the changed photo, the
    # missing one and the row without a path, nothing else.
    assert sorted(read) == sorted([path["dup"], path["gone"], "None"])
    ids, image, _ = read_embeddings(tmp_path / "e2.parquet")
    row = {pid: i for i, pid in enumerate(ids)}
    np.testing.assert_array_equal(image[row["dup"]], image[row["p1"]])
