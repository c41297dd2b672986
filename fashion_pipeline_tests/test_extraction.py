"""Core extraction: vocabularies, schema validation, rules on real Kaggle/H&M text, cache, quality."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from fashion_pipeline.core.extraction import quality, vocab
from fashion_pipeline.core.extraction.cache import ExtractionCache, cache_key
from fashion_pipeline.core.extraction.pipeline import Extractor, ProductText, results_to_records
from fashion_pipeline.core.extraction.prompt import PROMPT_VERSION, build_messages
from fashion_pipeline.core.extraction.rules import NaiveKeywordBaseline, RulesExtractor, split_sections
from fashion_pipeline.core.extraction.schema import (ATTRIBUTE_SCHEMA, NormaliseReport, SchemaViolation,
                                                     validate_output)
from fashion_pipeline.core.extraction.prepared_text import prepare
from fashion_pipeline.core.text_cleaning import strip_html
from fashion_pipeline.resources.extraction import ExtractorResource
from fashion_pipeline_tests.conftest import HM, KAGGLE, SAMPLE_ROOT
from fashion_pipeline_tests.fixtures.clock import DAY, Clock

STYLES = SAMPLE_ROOT / KAGGLE / "styles"


def kaggle(product_id: str) -> tuple[str, str, str, str]:
    """(title, plain description, brand, articleAttributes JSON) of a real sample product."""
    d = json.loads((STYLES / f"{product_id}.json").read_text())["data"]
    desc = strip_html(d["productDescriptors"]["description"]["value"])
    return d["productDisplayName"], desc, d["brandName"], json.dumps(d.get("articleAttributes"))


def sample_products() -> list[tuple[str, str, str, str]]:
    out = []
    for f in sorted(STYLES.glob("*.json")):
        d = json.loads(f.read_text())["data"]
        desc = ((d.get("productDescriptors") or {}).get("description") or {}).get("value", "")
        out.append((d.get("productDisplayName") or "", strip_html(desc), d.get("brandName"),
                    json.dumps(d.get("articleAttributes"))))
    return out


# --- vocabularies and validation -------------------------------------------------------------

def test_synonyms_map_to_canonical_values_and_unknowns_to_none():
    assert vocab.normalise_material("Lycra") == "elastane"
    assert vocab.normalise_material("spandex") == "elastane"
    assert vocab.normalise_material("PU leather") == "synthetic leather"
    assert vocab.normalise_material("Viscose Rayon") == "viscose"
    assert vocab.normalise_material("unobtainium") is None
    assert vocab.normalise_fit("Slim Fit") == "slim"
    assert vocab.normalise_fit("Comfort") == "regular"
    assert vocab.normalise_pattern("Stripes") == "striped"
    assert vocab.normalise_occasion("Everyday") == "casual"
    assert vocab.normalise_care("Machine washable") == "machine wash"
    assert len(vocab.MATERIAL_VALUES) >= 40
    for required in ("cotton", "polyester", "leather", "synthetic leather", "denim", "wool", "silk", "linen",
                     "viscose", "nylon", "elastane"):
        assert required in vocab.MATERIAL_VALUES
    for required in ("machine wash cold", "hand wash", "do not bleach", "tumble dry low", "dry clean", "iron"):
        assert required in vocab.CARE_VALUES


def test_schema_enums_are_the_vocabularies():
    props = ATTRIBUTE_SCHEMA["properties"]
    assert props["materials"]["items"]["enum"] == list(vocab.MATERIAL_VALUES)
    assert props["care"]["items"]["enum"] == list(vocab.CARE_VALUES)
    assert set(ATTRIBUTE_SCHEMA["required"]) == set(props)


def test_validation_normalises_synonyms_and_counts_unknown_values():
    raw = json.dumps({"brand": " Roadster ", "materials": ["Cotton", "lycra", "moon dust"],
                      "care": ["Machine washable", "do not bleach", "sing to it"], "fit": "Slim Fit",
                      "pattern": "plaid", "occasion": "galactic", "style": ["crew neck"]})
    report = NormaliseReport()
    a = validate_output(raw, report)
    assert a.brand == "Roadster"
    assert a.materials == ["cotton", "elastane"]
    assert a.care == ["machine wash", "do not bleach"]
    assert (a.fit, a.pattern, a.occasion) == ("slim", "checked", None)
    assert a.style == ["round neck"]
    assert report.unknown == {"materials": ["moon dust"], "care": ["sing to it"], "occasion": ["galactic"]}
    assert report.n_unknown == 3


@pytest.mark.parametrize("raw, reason", [
    ('{"brand": "Nike", "materials": ["cot', "not valid JSON"),           # cut off at max_tokens
    ("[1, 2]", "expected a JSON object"),
    ('{"brand": "Nike"}', "missing keys"),
    ('{"brand": 3, "materials": [], "care": [], "fit": null, "pattern": null, "occasion": null, "style": []}',
     "brand must be"),
    ('{"brand": null, "materials": "cotton", "care": [], "fit": null, "pattern": null, "occasion": null, '
     '"style": []}', "materials must be"),
    ('{"brand": null, "materials": [], "care": [], "fit": null, "pattern": null, "occasion": null, "style": [], '
     '"price": 3}', "unexpected keys"),
])
def test_schema_violations_are_rejected_with_a_reason(raw, reason):
    with pytest.raises(SchemaViolation, match=reason):
        validate_output(raw)


# --- input hygiene ---------------------------------------------------------------------------

def test_html_only_long_and_non_english_inputs_are_flagged():
    html_only = prepare("Nike Men Shoes", "<p><br /></p><div>&nbsp;</div>", 2000)
    assert html_only.empty_description and html_only.description == ""
    long = prepare("Title", "cotton " * 1000, 300)
    assert long.truncated and len(long.description) <= 300
    assert not prepare("Title", "short", 300).truncated
    assert prepare("Camiseta", "Camiseta de algodón con cuello redondo y manga corta para el día a día",
                   2000).non_english
    assert prepare("Футболка", "Хлопковая футболка с круглым вырезом", 2000).non_english
    title, desc, _, _ = kaggle("31293")
    assert not prepare(title, desc, 2000).non_english


def test_prepared_texts_kept_between_runs_are_served_again_and_only_by_the_same_code(tmp_path, monkeypatch):
    """The extractor's training keeps the catalogue's prepared texts in a file: the next run (a fresh
    process: the in-process memo cleared) takes them from it instead of preparing them, prepares only
    texts it does not hold, and a file written by other code or unreadable is not used (said in its note)."""
    from fashion_pipeline.core.extraction import prepared_text as pt

    calls = [("Nike Men Shoes", "<p>Soft <i>cotton</i> &amp; linen</p>", 2000),
             ("Camiseta", "Camiseta de algodón con cuello redondo y manga corta para el día a día", 2000),
             ("Title", "cotton " * 1000, 300)]
    expected = [pt._prepare(*c) for c in calls]
    store = pt.PreparedTextStore(tmp_path / "prepared.pkl")
    assert store.load() == 0 and store.note == "prepared.pkl: none yet"
    store.save(calls, [pt.prepare(*c) for c in calls])
    prepared_now = []
    real = pt._prepare
    monkeypatch.setattr(pt, "_prepare", lambda *a: prepared_now.append(a) or real(*a))
    try:
        again = pt.PreparedTextStore(tmp_path / "prepared.pkl")
        assert again.load() == 3 and again.note == "prepared.pkl: 3 prepared texts read"
        assert [pt.prepare(*c) for c in calls] == expected and prepared_now == []
        new = ("Jeans", "Slim fit denim", 2000)
        assert pt.prepare(*new) == real(*new) and prepared_now == [new]
        # The texts it read, in its order: the file is left as it is; one more text: it is written again.
        # (A write replaces the file: a new inode.)
        inode = (tmp_path / "prepared.pkl").stat().st_ino
        again.save(calls, expected)
        assert again.note.endswith("(the same texts: not rewritten)")
        assert (tmp_path / "prepared.pkl").stat().st_ino == inode
        again.save([*calls, new], [*expected, real(*new)])
        assert (tmp_path / "prepared.pkl").stat().st_ino != inode
        assert pt.PreparedTextStore(tmp_path / "prepared.pkl").load() == 4
        # A write that fails (here: a folder in the file's place) is said in the note, not raised.
        (tmp_path / "folder.pkl").mkdir()
        nowhere = pt.PreparedTextStore(tmp_path / "folder.pkl")
        assert nowhere.load() == 0 and nowhere.note.startswith("folder.pkl: unreadable (IsADirectoryError")
        nowhere.save(calls, expected)
        assert "; not saved (IsADirectoryError" in nowhere.note and (tmp_path / "folder.pkl").is_dir()
        assert again.load() == 4
        # Other code (the stamp covers this module and the HTML cleaning): not read, every text prepared again.
        monkeypatch.setattr(pt, "_code_stamp", lambda: "other code")
        assert pt.PreparedTextStore(tmp_path / "prepared.pkl").load() == 0
        assert [pt.prepare(*c) for c in calls] == expected and prepared_now[1:] == calls
        (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
        broken = pt.PreparedTextStore(tmp_path / "broken.pkl")
        assert broken.load() == 0 and broken.note.startswith("broken.pkl: unreadable (")
    finally:
        pt.PreparedTextStore(tmp_path / "absent.pkl").load()  # leave no stored results for other tests


@pytest.mark.parametrize("raw, text", [
    # Written with a space after "<", as in a few Kaggle descriptions: still tags, not words.
    ("< b> Style Note< /b>\nCertain scents", "Style Note\nCertain scents"),
    ("<p>Soft <i>cotton</i> &amp; linen</p><br/>Machine wash", "Soft cotton & linen\nMachine wash"),
    ("size 3 < 5 and 7 > 2", "size 3 < 5 and 7 > 2"),
    ("", ""),
])
def test_ingestion_and_extraction_strip_html_the_same_way(raw, text):
    assert strip_html(raw) == text
    assert prepare("T", raw, 2000).description == text


def test_prompt_carries_version_vocabulary_and_the_product_text():
    title, desc, _, _ = kaggle("32644")
    messages = build_messages(prepare(title, desc, 2000))
    assert PROMPT_VERSION
    assert messages[0]["role"] == "system" and "synthetic leather" in messages[0]["content"]
    assert messages[-1]["role"] == "user" and title in messages[-1]["content"]
    assert "100% polyester" in messages[-1]["content"]


# --- rules on real text ----------------------------------------------------------------------

def test_sections_of_a_real_myntra_description():
    _, desc, _, _ = kaggle("31293")
    roles = [r for r, _ in split_sections(desc)]
    assert roles[:3] == ["material", "fit", "care"]


def test_rules_on_real_kaggle_products():
    rules = RulesExtractor(brands=["Puma", "Nike", "Levis", "United Colors of Benetton"])
    title, desc, _, _ = kaggle("32644")  # Nike track pants, 100% polyester, "Fit: Comfort"
    a = rules.extract(prepare(title, desc, 2000))
    assert a.brand == "Nike"
    assert a.materials[0] == "polyester"
    assert a.fit == "regular"
    assert "machine wash cold" in a.care and "do not bleach" in a.care and "do not dry clean" in a.care
    assert "dry clean" not in a.care  # "Do not bleach or dry clean" is a negation

    title, desc, _, _ = kaggle("31293")  # "Do not bleach, tumble, iron and dry clean"
    a = rules.extract(prepare(title, desc, 2000))
    assert a.brand == "Puma" and a.materials == ["cotton"]
    assert {"do not bleach", "do not iron", "do not dry clean"} <= set(a.care)
    assert "iron" not in a.care and "dry clean" not in a.care
    assert "sleeveless" in a.style


def test_rules_on_a_real_hm_description():
    articles = pd.read_csv(SAMPLE_ROOT / HM / "articles.csv", dtype=str)
    row = articles[articles["detail_desc"].str.contains("containing some wool", na=False)].iloc[0]
    a = RulesExtractor(brands=["H&M"]).extract(prepare(row["prod_name"], row["detail_desc"], 2000))
    assert "wool" in a.materials


def test_rules_beat_the_naive_keyword_baseline_on_the_sample_catalogue():
    rows = sample_products()
    rules = RulesExtractor(brands=[r[2] for r in rows if r[2]])
    naive = NaiveKeywordBaseline()
    preps = [prepare(t, d, 2000) for t, d, _, _ in rows]
    truths = [quality.catalogue_truth(r[3]) for r in rows]
    ours = quality.score(truths, [rules.extract(p) for p in preps])
    base = quality.score(truths, [naive.extract(p) for p in preps])
    assert ours["material"].n_truth > 100
    assert ours["material"].accuracy > base["material"].accuracy + 0.05
    for attr in ("fit", "pattern"):
        assert ours[attr].accuracy >= base[attr].accuracy
    table = quality.markdown_table({"rules": ours, "naive": base})
    assert "| rules | material |" in table and "| naive | material |" in table


def test_catalogue_truth_and_scoring_rules():
    truth = quality.catalogue_truth(json.dumps({"Fabric": "Cotton Blend", "Fit": "Slim Fit", "Pattern": "Striped",
                                                "Occasion": "Western", "Wash Care": "Machine Wash"}))
    assert truth == {"material": "blend", "fit": "slim", "pattern": "striped", "care": "machine wash"}
    assert quality.catalogue_truth(None) == {} and quality.catalogue_truth("{}") == {}
    from fashion_pipeline.core.extraction.schema import Attributes
    s = quality.score([{"material": "blend", "care": "machine wash"}, {"material": "synthetic"}],
                      [Attributes(materials=["cotton", "polyester"], care=["machine wash cold"]),
                       Attributes(materials=[])])
    assert (s["material"].n_truth, s["material"].n_predicted, s["material"].n_correct) == (2, 1, 1)
    assert s["care"].accuracy == 1.0


# --- cache and the extraction runner ---------------------------------------------------------

def _products(n: int) -> list[ProductText]:
    return [ProductText(f"kaggle-{i}", t, d) for i, (t, d, _, _) in enumerate(sample_products()[:n])]


def test_cache_is_incremental_across_runs(tmp_path):
    products = _products(40)
    first, s1 = Extractor(RulesExtractor(), cache=ExtractionCache(tmp_path / "c")).run(products[:30])
    assert (s1.cached, s1.computed) == (0, 30)
    # A new process (new cache object) with 10 more products extracts only the new ones.
    second, s2 = Extractor(RulesExtractor(), cache=ExtractionCache(tmp_path / "c")).run(products)
    assert (s2.cached, s2.computed) == (30, 10)
    assert [r.attributes for r in second[:30]] == [r.attributes for r in first]


def test_cache_key_depends_on_text_backend_model_and_prompt_version():
    base = cache_key("t", "d", "rules", "m")
    assert len({base, cache_key("t", "d2", "rules", "m"), cache_key("t", "d", "vllm", "m"),
                cache_key("t", "d", "rules", "m2"), cache_key("t", "d", "rules", "m", "attr-v0")}) == 5


def test_corrupted_cache_entries_are_recomputed_not_served(tmp_path):
    products = _products(6)
    Extractor(RulesExtractor(), cache=ExtractionCache(tmp_path / "c")).run(products)
    (seg,) = list((tmp_path / "c").glob("seg-*.jsonl"))
    lines = seg.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["v"] = rec["v"].replace('"status": "', '"status": "x')  # payload changed, checksum now wrong
    lines[0] = json.dumps(rec)
    lines[1] = lines[1][: len(lines[1]) // 2]  # torn write: not JSON
    seg.write_text("\n".join(lines) + "\n")
    cache = ExtractionCache(tmp_path / "c")
    assert cache.corrupted == 2 and len(cache) == 4
    results, stats = Extractor(RulesExtractor(), cache=cache).run(products)
    assert (stats.cached, stats.computed, stats.cache_corrupted) == (4, 2, 2)
    assert all(r.status in ("ok", "empty") for r in results)
    # The rewrite dropped the bad lines: a fresh load is clean.
    assert ExtractionCache(tmp_path / "c").corrupted == 0


def test_runner_counts_bad_input_and_writes_contract_rows():
    products = [
        ProductText("kaggle-1", "Nike Men Blue Slim Fit Shirt", "<p>&nbsp;</p>"),
        ProductText("kaggle-2", "Puma Tee", "Made of 100% cotton. " + "Soft and comfy. " * 400),
        ProductText("hm-0000000001", "Strap top", "Kurzes Top aus Baumwolle mit Spaghettiträgern und Spitze"),
    ]
    results, stats = Extractor(RulesExtractor(brands=["Nike", "Puma"]), max_description_chars=500).run(products)
    assert (stats.empty_description, stats.truncated, stats.non_english) == (1, 1, 1)
    assert [r.status for r in results] == ["empty", "ok", "ok"]
    assert results[0].attributes.fit == "slim" and results[0].attributes.brand == "Nike"  # from the title
    rows = pd.DataFrame(results_to_records(results, "rules", "rules-v1"))
    assert list(rows.columns) == ["product_id", "brand", "materials", "care", "fit", "pattern", "occasion", "style",
                                  "backend", "model", "status"]
    assert json.loads(rows.loc[1, "materials"]) == ["cotton"]


def test_resource_builds_backends(tmp_path):
    with pytest.raises(ValueError, match="attribute_extractor"):  # the default backend needs its trained model
        ExtractorResource(cache_dir=str(tmp_path / "c")).build(["Nike"])
    res = ExtractorResource(backend="rules", cache_dir=str(tmp_path / "c"))
    runner = res.build(["Nike"])
    assert runner.backend == "rules" and re.fullmatch(r"rules-v1\+[0-9a-f]{8}", runner.model)
    assert runner.cache is not None and runner.cache.dir == tmp_path / "c" / "rules"
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ExtractorResource(backend="transformers", model=str(missing), cache_dir=str(tmp_path / "c")).build()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ExtractorResource(backend="vllm", model=str(missing), cache_dir=str(tmp_path / "c")).build()


def test_many_small_runs_are_compacted_without_losing_entries(tmp_path):
    from fashion_pipeline.core.extraction.cache import MAX_SEGMENTS

    products = _products(MAX_SEGMENTS + 2)
    for i in range(len(products)):  # one new product per run -> one new segment per run
        Extractor(RulesExtractor(), cache=ExtractionCache(tmp_path / "c")).run(products[: i + 1])
    assert len(list((tmp_path / "c").glob("seg-*.jsonl"))) <= MAX_SEGMENTS
    assert not list((tmp_path / "c").glob(".tmp-*"))  # no temp files left behind
    _, stats = Extractor(RulesExtractor(), cache=ExtractionCache(tmp_path / "c")).run(products)
    assert stats.cached == len(products)


def _run(cache_dir, clock, products, retention_days=28):
    retention = None if retention_days is None else retention_days * DAY
    return Extractor(RulesExtractor(), cache=ExtractionCache(cache_dir, clock=clock),
                     cache_retention_s=retention).run(products)[1]


def test_the_cache_forgets_what_no_run_read_for_the_retention_period(tmp_path):
    products, clock, c = _products(6), Clock(), tmp_path / "c"
    assert _run(c, clock, products).computed == 6
    clock.t += 20 * DAY  # a run reads four; the other two products left the catalogue
    s2 = _run(c, clock, products[:4])
    assert (s2.cached, s2.cache_expired) == (4, 0)
    clock.t += 10 * DAY  # the two unread entries are now 30 days old, the four read ones 10
    s3 = _run(c, clock, products[:1])
    assert (s3.cached, s3.cache_expired) == (1, 2)
    assert len(ExtractionCache(c, clock=clock)) == 4  # gone from disk as well
    clock.t += 365 * DAY  # no retention keeps everything, however old
    assert _run(c, clock, products[:1], retention_days=None).cache_expired == 0
    assert len(ExtractionCache(c, clock=clock)) == 4
    # Entries read by a run are served and kept however long they went unread (the key is the text,
    # backend, model and prompt: age alone does not make one wrong); the two forgotten ones are recomputed.
    s5 = _run(c, clock, products)
    assert (s5.cached, s5.computed, s5.cache_expired) == (4, 2, 0)
    assert len(ExtractionCache(c, clock=clock)) == 6


def test_reads_within_a_day_of_the_recorded_use_do_not_rewrite_the_cache(tmp_path):
    products, clock, c = _products(5), Clock(), tmp_path / "c"
    _run(c, clock, products)
    segments = {p.name: p.read_bytes() for p in c.glob("seg-*.jsonl")}
    clock.t += 0.5 * DAY
    assert _run(c, clock, products).cached == 5
    assert {p.name: p.read_bytes() for p in c.glob("seg-*.jsonl")} == segments
    clock.t += DAY  # 1.5 days after the recorded use: one rewrite, recording this read
    assert _run(c, clock, products).cached == 5
    (seg,) = list(c.glob("seg-*.jsonl"))
    assert seg.name not in segments
    assert [json.loads(line)["t"] for line in seg.read_text().splitlines()] == [clock.t] * 5


def test_entries_written_before_retention_count_as_used_when_their_segment_was_written(tmp_path):
    import os

    products, clock, c = _products(3), Clock(), tmp_path / "c"
    _run(c, clock, products, retention_days=None)
    (seg,) = list(c.glob("seg-*.jsonl"))
    lines = [json.loads(line) for line in seg.read_text().splitlines()]
    seg.write_text("".join(json.dumps({k: v for k, v in rec.items() if k != "t"}) + "\n" for rec in lines))
    os.utime(seg, (clock.t - 40 * DAY, clock.t - 40 * DAY))
    cache = ExtractionCache(c, clock=clock)
    assert cache.corrupted == 0 and len(cache) == 3
    assert cache.finish(50 * DAY) == 0
    assert cache.finish(28 * DAY) == 3 and len(ExtractionCache(c, clock=clock)) == 0
    with pytest.raises(ValueError, match="max_age_s"):
        cache.finish(-1)


def test_retention_zero_keeps_exactly_what_the_run_read_or_wrote(tmp_path):
    products, clock, c = _products(6), Clock(), tmp_path / "c"
    _run(c, clock, products[:4], retention_days=None)
    clock.t += 0.25 * DAY  # reads within a day leave the recorded use as it was; still kept
    s = _run(c, clock, products[2:], retention_days=0)
    assert (s.cached, s.computed, s.cache_expired) == (2, 2, 2)
    assert _run(c, clock, products[2:], retention_days=None).cached == 4


def test_the_resource_passes_its_retention_to_the_extractor(tmp_path):
    def retention(**kw):
        return ExtractorResource(backend="rules", cache_dir=str(tmp_path / "c"), **kw).build().cache_retention_s

    assert retention() == 28 * DAY
    assert retention(cache_retention_days=2.5) == 2.5 * DAY
    assert retention(cache_retention_days=None) is None
    with pytest.raises(Exception, match="greater than or equal to 0"):
        ExtractorResource(backend="rules", cache_retention_days=-1)


def test_the_rules_version_follows_their_source(monkeypatch):
    """Cached rules values are keyed by RULES_MODEL, so an edited rule must change it."""
    import inspect

    from fashion_pipeline.core.extraction import pipeline, rules

    before = pipeline.rules_digest()
    assert pipeline.RULES_MODEL == f"rules-v1+{before}"
    source = inspect.getsource
    monkeypatch.setattr(inspect, "getsource", lambda m: source(m) + ("\n# edited" if m is rules else ""))
    assert pipeline.rules_digest() != before
