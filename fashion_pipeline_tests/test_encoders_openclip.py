"""The real open_clip code path (load from local-dir:, preprocess, encode, autocast plumbing) with a tiny
random-init model that the test builds and saves; plus the clear errors for bad model / weights config.

The tiny model's vectors carry no meaning (random weights): the tests check loading, shapes, alignment
metadata, that the saved weights are the ones used, and the pipeline around it. CUDA-only paths
(fp16/bf16 autocast, pinned memory) run only where a GPU exists (see test_open_clip_on_gpu)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fashion_pipeline.core.encoders import EncoderConfigError, build_backend, embed_products, read_embeddings
from fashion_pipeline.core.encoders import read_embedding_metadata
from fashion_pipeline.core.encoders.images import decode_image, read_image_bytes
from fashion_pipeline.core.encoders.openclip import save_open_clip_dir
from fashion_pipeline_tests.fixtures.encoders import damaged

open_clip = pytest.importorskip("open_clip")

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CFG)
    folder = save_open_clip_dir(model, TINY_CFG, tmp_path_factory.mktemp("tiny-clip"))
    return folder, model.eval()


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    # fp32: these tests compare with the reference model's own fp32 outputs (auto = bf16 on CPUs with native bf16).
    return build_backend("open_clip", model_name="ignored-when-local-dir", pretrained=f"local-dir:{tiny_dir[0]}",
                         precision="fp32")


def test_local_dir_model_loads_the_saved_weights_and_is_aligned(tiny, tiny_dir):
    _, reference = tiny_dir
    meta = tiny.describe()
    assert meta["backend"] == "open_clip" and meta["aligned"] == "true"
    assert meta["image_dim"] == meta["text_dim"] == "16"
    assert "weights-sha256=" in meta["image_identity"]
    im = decode_image(read_image_bytes(damaged.real_images(1)[0]).data)[0]
    pixels = tiny.image_transform()(im).unsqueeze(0)
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    got = tiny.encode_image_batch(pixels)
    with torch.no_grad():
        want = reference.encode_image(pixels, normalize=True).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)  # the saved weights, not a fresh random init
    txt = tiny.encode_text_batch(["blue jeans", "a very long description " * 30])
    assert txt.shape == (2, 16) and np.allclose(np.linalg.norm(txt, axis=1), 1, atol=1e-4)  # long text truncated


def test_open_clip_backend_runs_the_whole_pipeline(tiny, tmp_path):
    paths = damaged.real_images(5, hm=1)
    df = pd.DataFrame(
        {"product_id": [f"p{i}" for i in range(len(paths))] + ["none"],
         "title": [f"product {i}" for i in range(len(paths))] + ["no image"],
         "image_path": [str(p) for p in paths] + [None]}
    )
    rep = embed_products(df, tiny, tmp_path / "e.parquet", tmp_path / "cache", image_batch_size=2, loader_workers=1)
    ids, image, text = read_embeddings(tmp_path / "e.parquet")
    assert ids == df.product_id.tolist() and image.shape == (7, 16) and text.shape == (7, 16)
    assert rep.image.failed_rows == {"no_image_path": 1} and np.isnan(image[-1]).all()
    assert read_embedding_metadata(tmp_path / "e.parquet")["aligned"] == "true"


def test_changed_open_clip_weights_change_the_identity(tiny, tiny_dir, tmp_path):
    torch.manual_seed(1)
    other = save_open_clip_dir(open_clip.CLIP(**TINY_CFG), TINY_CFG, tmp_path / "other")
    b = build_backend("open_clip", model_name="x", pretrained=f"local-dir:{other}")
    assert b.image.identity != tiny.image.identity and b.text.identity != tiny.text.identity


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"model_name": "ViT-Nonexistent-99", "pretrained": "x"}, EncoderConfigError, "ViT-Nonexistent-99"),
        ({"model_name": "ViT-B-32", "pretrained": "/no/such/weights.safetensors"}, FileNotFoundError,
         "/no/such/weights.safetensors"),
        ({"model_name": "ViT-B-32", "pretrained": "not_a_tag"}, EncoderConfigError, "not_a_tag"),
        ({"model_name": "ViT-B-32", "pretrained": "local-dir:/no/such/folder"}, FileNotFoundError, "/no/such/folder"),
        ({"model_name": "ViT-B-32", "pretrained": None}, EncoderConfigError, "needs weights"),
        ({"model_name": "ViT-B-32", "pretrained": "x", "precision": "fp16"}, EncoderConfigError, "CUDA"),
    ],
)
def test_bad_model_or_weights_name_the_culprit(options, error, names):
    with pytest.raises(error, match=names):
        build_backend("open_clip", **options)


def test_local_dir_without_weights_is_a_clear_error(tmp_path, tiny_dir):
    (tmp_path / "open_clip_config.json").write_text((tiny_dir[0] / "open_clip_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="holds none of"):
        build_backend("open_clip", model_name="x", pretrained=f"local-dir:{tmp_path}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_device_without_cuda_is_refused(tiny_dir):
    with pytest.raises(EncoderConfigError, match="CUDA is not available"):
        build_backend("open_clip", model_name="x", pretrained=f"local-dir:{tiny_dir[0]}", device="cuda")


# GPU code path: runs only on a CUDA machine (autocast fp16 / bf16, pinned-memory loader).
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_open_clip_on_gpu(tiny_dir, tmp_path, precision):
    cpu = build_backend("open_clip", model_name="x", pretrained=f"local-dir:{tiny_dir[0]}")
    gpu = build_backend("open_clip", model_name="x", pretrained=f"local-dir:{tiny_dir[0]}", device="cuda",
                        precision=precision)
    assert gpu.precision == precision and precision in gpu.image.identity
    paths = damaged.real_images(4)
    df = pd.DataFrame({"product_id": [f"p{i}" for i in range(4)], "title": ["red dress"] * 4,
                       "image_path": [str(p) for p in paths]})
    embed_products(df, cpu, tmp_path / "cpu.parquet", tmp_path / "c1", loader_workers=0)
    embed_products(df, gpu, tmp_path / "gpu.parquet", tmp_path / "c2", loader_workers=1)
    _, ic, tc = read_embeddings(tmp_path / "cpu.parquet")
    _, ig, tg = read_embeddings(tmp_path / "gpu.parquet")
    # Half precision changes the numbers only slightly.
    assert np.allclose(ic, ig, atol=2e-2) and np.allclose(tc, tg, atol=2e-2)
