"""Run extraction over products: cache lookup, batching, validation, retry, rules fallback.

Shared by every backend. Per row the status is:
- "ok": the backend's output validated (or the rules backend ran);
- "fallback": the LLM output failed validation twice (or hit max tokens twice) -> rules result;
- "empty": the description is empty / HTML-only -> rules on the title only (an LLM given a
  bare title invents materials and care); the learned model reads the title alone (it says
  "unknown" where the title is not enough).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from fashion_pipeline.core.extraction import prepared_text as textmod
from fashion_pipeline.core.extraction.backends import Generation, LLMBackend
from fashion_pipeline.core.extraction.cache import ExtractionCache, cache_key
from fashion_pipeline.core.extraction.prompt import PROMPT_VERSION, build_messages
from fashion_pipeline.core.extraction.learned import LearnedAttributeModel
from fashion_pipeline.core.extraction.rules import RulesExtractor
from fashion_pipeline.core.extraction.schema import Attributes, NormaliseReport, SchemaViolation, validate_output

log = logging.getLogger(__name__)


def rules_digest() -> str:
    """Digest of the rules' source (the rules, their vocabularies, the schema's limits)."""
    from fashion_pipeline.core.extraction import rules, schema, vocab
    from fashion_pipeline.core.fingerprint import source_digest

    return source_digest(rules, vocab, schema)[:8]


# The rules' version, part of the cache key of their values (the rules backend's, and the ones the
# learned model completes): an edited rule recomputes them instead of serving the old answers.
RULES_MODEL = f"rules-v1+{rules_digest()}"
LEARNED_BATCH = 4096  # products per learned-model call (bounds the TF-IDF matrix; progress per batch)


@dataclass
class ProductText:
    product_id: str
    title: str
    description: str
    known_brand: str | None = None  # the catalogue's own brand field (Kaggle brandName, "H&M"), when present


@dataclass
class ExtractionResult:
    product_id: str
    attributes: Attributes
    status: str


@dataclass
class RunStats:
    backend: str
    model: str
    prompt_version: str = PROMPT_VERSION
    rows: int = 0
    cached: int = 0
    computed: int = 0
    failed_validation: int = 0  # first LLM attempt invalid (bad JSON / schema / max tokens)
    hit_max_tokens: int = 0
    retried_ok: int = 0
    fell_back: int = 0
    truncated: int = 0
    empty_description: int = 0
    non_english: int = 0
    unknown_values_dropped: int = 0
    cache_corrupted: int = 0
    rules_reused: int = 0  # learned backend: rows whose rules values came from the cache (a previous model's run)
    cache_dropped: int = 0  # learned backend: cached results of other learned versions, removed
    cache_expired: int = 0  # cached results no run had read or written for the retention period, removed
    seconds: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    failure_examples: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 and self.output_tokens else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rows_per_s"] = round(self.rows_per_s, 2)
        d["output_tokens_per_s"] = round(self.output_tokens_per_s, 2)
        return d


class Extractor:
    """Configured extraction: a backend (an LLM, the learned model, or neither = rules) + rules
    fallback + optional cache. ``cache_retention_s``: after each run the cache forgets what no run
    has read or written for that long (None: keeps everything)."""

    def __init__(self, rules: RulesExtractor, llm: LLMBackend | None = None, cache: ExtractionCache | None = None,
                 max_description_chars: int = 2000, batch_size: int = 16, max_new_tokens: int = 160,
                 retry_max_new_tokens: int | None = None, learned: LearnedAttributeModel | None = None,
                 cache_retention_s: float | None = None):
        if llm is not None and learned is not None:
            raise ValueError("an extractor runs one backend: an LLM or the learned model, not both")
        self.rules = rules
        self.llm = llm
        self.learned = learned
        self.cache = cache
        self.cache_retention_s = cache_retention_s
        self.max_description_chars = max_description_chars
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.retry_max_new_tokens = retry_max_new_tokens or 2 * max_new_tokens

    @property
    def backend(self) -> str:
        return self.llm.name if self.llm else "learned" if self.learned else "rules"

    @property
    def model(self) -> str:
        if self.llm:
            return self.llm.model
        # The learned model's output includes rules values (style, further materials): both versions key the cache.
        return f"{self.learned.version}+{RULES_MODEL}" if self.learned else RULES_MODEL

    def _rules(self, t: textmod.PreparedText, status: str) -> dict:
        return {"attributes": self.rules.extract(t).to_dict(), "status": status}

    def _rules_values(self, items: list[tuple[str, textmod.PreparedText]], stats: RunStats,
                      new: dict[str, dict]) -> list[Attributes]:
        """The rules' values of each text, which the learned model completes: from the cache under the
        key the rules backend uses (they depend on the text and the rules, not on the learned model, so a
        retrained model reuses them), else computed and added to ``new`` under that key."""
        if self.cache is None:
            return [self.rules.extract(t) for _, t in items]
        out = []
        for _, t in items:
            key = cache_key(t.title, t.description, "rules", RULES_MODEL)
            hit = self.cache.get(key)
            if hit is None:
                hit = new[key] = self._rules(t, "empty" if t.empty_description else "ok")
            else:
                stats.rules_reused += 1
            out.append(Attributes.from_dict(hit["attributes"]))
        return out

    def _validate(self, gens: Sequence[Generation], stats: RunStats) -> list[Attributes | None]:
        out: list[Attributes | None] = []
        for g in gens:
            stats.output_tokens += g.output_tokens
            stats.prompt_tokens += g.prompt_tokens
            if g.finish_reason == "length":
                stats.hit_max_tokens += 1
                out.append(None)
                continue
            report = NormaliseReport()
            try:
                out.append(validate_output(g.text, report))
                stats.unknown_values_dropped += report.n_unknown
            except SchemaViolation as e:
                if len(stats.failure_examples) < 5:
                    stats.failure_examples.append(f"{e}: {g.text[:120]!r}")
                out.append(None)
        return out

    def _run_llm(self, todo: list[tuple[str, textmod.PreparedText]], stats: RunStats,
                 progress: Callable[[int, int], None] | None) -> dict[str, dict]:
        results: dict[str, dict] = {}
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            first = self._validate(self.llm.generate([build_messages(t) for _, t in batch], self.max_new_tokens),
                                   stats)
            retry = [i for i, a in enumerate(first) if a is None]
            stats.failed_validation += len(retry)
            if retry:
                # One retry with a bigger budget (max_tokens is the usual cause of broken JSON).
                second = self._validate(self.llm.generate([build_messages(batch[i][1]) for i in retry],
                                                          self.retry_max_new_tokens), stats)
                for i, a in zip(retry, second):
                    first[i] = a
                    stats.retried_ok += a is not None
            for (key, t), a in zip(batch, first):
                if a is None:
                    stats.fell_back += 1
                    results[key] = self._rules(t, "fallback")
                else:
                    results[key] = {"attributes": a.to_dict(), "status": "ok"}
            if progress:
                progress(min(start + self.batch_size, len(todo)), len(todo))
        return results

    def run(self, products: Sequence[ProductText],
            progress: Callable[[int, int], None] | None = None) -> tuple[list[ExtractionResult], RunStats]:
        stats = RunStats(backend=self.backend, model=self.model, rows=len(products))
        if self.cache is not None:
            stats.cache_corrupted = self.cache.corrupted
        t0 = time.perf_counter()
        keys: list[str] = []
        titles: list[str] = []
        prepared: dict[str, textmod.PreparedText] = {}
        found: dict[str, dict] = {}
        for p in products:
            t = textmod.prepare(p.title, p.description, self.max_description_chars)
            stats.truncated += t.truncated
            stats.empty_description += t.empty_description
            stats.non_english += t.non_english
            key = cache_key(t.title, t.description, self.backend, self.model)
            keys.append(key)
            titles.append(t.title)
            if key in found or key in prepared:
                continue
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                found[key] = cached
            else:
                prepared[key] = t
        stats.cached = sum(k in found for k in keys)
        stats.computed = len(products) - stats.cached

        new: dict[str, dict] = {}
        llm_todo = []
        if self.learned is not None and prepared:
            log.info("extracting %d products with the learned model %s", len(prepared), self.learned.version)
            items = list(prepared.items())
            rules_values = self._rules_values(items, stats, new)
            for start in range(0, len(items), LEARNED_BATCH):
                chunk = items[start:start + LEARNED_BATCH]
                for (key, t), a in zip(chunk, self.learned.extract([t for _, t in chunk], self.rules,
                                                                   rules_results=rules_values[start:start + LEARNED_BATCH])):
                    new[key] = {"attributes": a.to_dict(), "status": "empty" if t.empty_description else "ok",
                                "model": self.model}
                if progress:
                    progress(min(start + LEARNED_BATCH, len(items)), len(items))
            prepared = {}
        for key, t in prepared.items():
            if self.llm is None:
                new[key] = self._rules(t, "empty" if t.empty_description else "ok")
            elif t.empty_description:
                new[key] = self._rules(t, "empty")
            else:
                llm_todo.append((key, t))
        if llm_todo:
            log.info("extracting %d products with %s (%s)", len(llm_todo), self.backend, self.model)
            new.update(self._run_llm(llm_todo, stats, progress))
        if self.cache is not None:
            self.cache.put_many(new)
            if self.learned is not None:
                # A learned model's results are keyed by its version, so a retrained model never reads its
                # predecessors' again: without this the cache grew by every product at every retrain, and each
                # run loads all of it. (Entries written before results carried their model stay.)
                model = self.model
                stats.cache_dropped = self.cache.drop_where(
                    lambda v: str(v.get("model", "")).startswith("learned-") and v["model"] != model)
            stats.cache_expired = self.cache.finish(self.cache_retention_s)
        stats.seconds = time.perf_counter() - t0
        found.update(new)
        results = []
        for p, k, title in zip(products, keys, titles):
            a = Attributes.from_dict(found[k]["attributes"])
            if p.known_brand:
                # A brand the catalogue states beats one read from the title (H&M names its
                # products "Roxy", "Tilda", ...; the title carries no brand there).
                a.brand = p.known_brand
            elif self.learned is None and (self.llm is None or found[k]["status"] != "ok"):
                # (The learned model's brand is its own matcher's: that vocabulary is part of the
                # model's version, hence of the cache key, so the cached brand is current.)
                # Rules brands come from the current brand lexicon, not the cache: adding products
                # with new brands must not invalidate every cached row.
                a.brand = self.rules.brand(title)
            results.append(ExtractionResult(p.product_id, a, found[k]["status"]))
        return results, stats


def results_to_records(results: Sequence[ExtractionResult], backend: str, model: str) -> list[dict]:
    """Rows of the product_attributes table (lists as JSON strings, style joined)."""
    return [{
        "product_id": r.product_id,
        "brand": r.attributes.brand,
        "materials": json.dumps(r.attributes.materials),
        "care": json.dumps(r.attributes.care),
        "fit": r.attributes.fit,
        "pattern": r.attributes.pattern,
        "occasion": r.attributes.occasion,
        "style": ", ".join(r.attributes.style) or None,
        "backend": backend,
        "model": model,
        "status": r.status,
    } for r in results]


def fill_rates(results: Sequence[ExtractionResult]) -> dict[str, float]:
    n = max(len(results), 1)
    keys = ("brand", "materials", "care", "fit", "pattern", "occasion", "style")
    return {k: round(sum(bool(getattr(r.attributes, k)) for r in results) / n, 4) for k in keys}
