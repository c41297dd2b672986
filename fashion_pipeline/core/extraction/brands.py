"""Brand from free text: a listing that states no brand often names one in its title.

The vocabulary is the catalogue's own brand column (training products). Matching is
case-insensitive and punctuation-insensitive ("ADIDAS", "Levi's" ~ "levis", "Tommy Hilfiger"),
finds multi-word brands anywhere in the text (longest match wins, then the earliest), accepts a
brand written without its spaces ("tommyhilfiger"), and one typo in a brand word of 6+ letters
("addidas" is not one typo from "adidas", "adiddas" is).

Brands that are also ordinary words or product names are the source of wrong answers
("Basics", "Roxy" is an H&M product name). `fit` measures that on training titles: a brand
whose mentions in titles of *other* brands' products make it right less than `min_precision`
of the time is accepted only at the start of a title, or not at all when even that is unreliable.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

_SPLIT = re.compile(r"[^a-z0-9]+")


def normalise(text: str | None) -> list[str]:
    """Lower-case ASCII tokens: accents folded, '&' -> 'and', apostrophes and dots dropped."""
    if not text:
        return []
    s = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    s = s.replace("&", " and ").replace("'", "").replace("\u2019", "").replace(".", "")
    return [t for t in _SPLIT.split(s) if t]


def _one_edit(a: str, b: str) -> bool:
    """True when a and b differ by exactly one substitution, insertion, deletion or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


@dataclass
class Match:
    brand: str
    start: int  # token position in the text
    exact: bool


@dataclass
class BrandMatcher:
    """Find a known brand in free text. Build with `BrandMatcher.fit` (or the constructor for a
    plain vocabulary with every brand accepted anywhere)."""

    brands: Sequence[str] = ()
    start_only: frozenset[str] = frozenset()  # canonical brands accepted only as the text's first words
    excluded: frozenset[str] = frozenset()  # brands never matched in free text (measured unreliable)
    fuzzy_min_chars: int = 6
    _index: dict = field(default_factory=dict, init=False, repr=False)
    _joined: dict = field(default_factory=dict, init=False, repr=False)
    _fuzzy: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        by_tokens: dict[tuple[str, ...], str] = {}
        counts = Counter(self.brands)
        # When two spellings normalise alike ("Levis", "Levi's"), keep the most frequent one.
        for b in sorted(counts, key=lambda x: (-counts[x], x)):
            toks = tuple(normalise(b))
            if toks and toks not in by_tokens:
                by_tokens[toks] = b
        self.brands = tuple(sorted(set(by_tokens.values())))
        for toks, b in by_tokens.items():
            if b in self.excluded:
                continue
            self._index.setdefault(toks[0], []).append((toks, b))
            joined = "".join(toks)
            if len(toks) > 1 and len(joined) >= self.fuzzy_min_chars:
                self._joined.setdefault(joined, b)
            if len(toks) == 1 and len(joined) >= self.fuzzy_min_chars:
                self._fuzzy.setdefault(len(joined), []).append((joined, b))
        for v in self._index.values():
            v.sort(key=lambda tb: len(tb[0]), reverse=True)

    def matches(self, text: str | None) -> list[Match]:
        toks = normalise(text)
        out: list[Match] = []
        for i, t in enumerate(toks):
            for btoks, b in self._index.get(t, ()):
                if tuple(toks[i:i + len(btoks)]) == btoks:
                    out.append(Match(b, i, True))
                    break
            else:
                if t in self._joined:
                    out.append(Match(self._joined[t], i, True))
                elif len(t) >= self.fuzzy_min_chars:
                    near = {b for w, b in self._one_edit_candidates(t) if _one_edit(t, w)}
                    if len(near) == 1:  # two brands one typo away: no guess
                        out.append(Match(near.pop(), i, False))
        return [m for m in out if m.start == 0 or m.brand not in self.start_only]

    def _one_edit_candidates(self, token: str) -> set[tuple[str, str]]:
        """Single-word brands that may be one edit from ``token``: those sharing a one-deletion
        variant with it, or equal to one of its variants or it to theirs (a superset of the one-edit
        words, which ``_one_edit`` then checks; a scan of every brand of a near length was the
        scorer's slowest step). The index is built on first use and never pickled."""
        index = self.__dict__.get("_deletion_index")
        if index is None:
            index = {}
            for n in sorted(self._fuzzy):
                for w, b in self._fuzzy[n]:
                    for key in _deletions(w) | {w}:
                        index.setdefault(key, []).append((w, b))
            self.__dict__["_deletion_index"] = index
        return {wb for key in _deletions(token) | {token} for wb in index.get(key, ())}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_deletion_index"}

    def find(self, text: str | None) -> str | None:
        """The brand named in the text: exact before fuzzy, then the longest, then the earliest."""
        found = self.matches(text)
        if not found:
            return None
        best = min(found, key=lambda m: (not m.exact, -len(normalise(m.brand)), m.start))
        return best.brand

    @classmethod
    def fit(cls, titles: Iterable[str], brands: Iterable[str | None], min_precision: float = 0.9,
            min_mentions: int = 5) -> "BrandMatcher":
        """Vocabulary = the brands of these (training) products; each brand's reliability is
        measured on the same titles: among titles where the brand is found, how often the
        product's brand is that brand, at the title's start and elsewhere."""
        titles, brands = list(titles), [b if isinstance(b, str) and b.strip() else None for b in brands]
        plain = cls([b for b in brands if b])
        hits_start, right_start, hits_any, right_any = Counter(), Counter(), Counter(), Counter()
        for title, gold in zip(titles, brands):
            gold_toks = normalise(gold)
            for m in plain.matches(title):
                ok = normalise(m.brand) == gold_toks
                hits_any[m.brand] += 1
                right_any[m.brand] += ok
                if m.start == 0:
                    hits_start[m.brand] += 1
                    right_start[m.brand] += ok

        def unreliable(hits: Counter, right: Counter, b: str) -> bool:
            return hits[b] >= min_mentions and right[b] / hits[b] < min_precision

        excluded = {b for b in plain.brands if unreliable(hits_start, right_start, b)
                    or (hits_start[b] < min_mentions and unreliable(hits_any, right_any, b))}
        start_only = {b for b in plain.brands if b not in excluded and unreliable(hits_any, right_any, b)}
        return cls([b for b in brands if b], start_only=frozenset(start_only), excluded=frozenset(excluded))

    def describe(self) -> dict:
        return {"brands": len(self.brands), "start_only": sorted(self.start_only),
                "excluded": sorted(self.excluded)}


def score_titles(find: Callable[[str], str | None], vocabulary: Iterable[str], titles: Sequence[str],
                 gold: Sequence[str | None]) -> dict:
    """Brand found in titles, scored against the catalogue's brand column.

    `find` is the brand finder under test (e.g. `BrandMatcher.find`). A title "contains a known
    brand" when the product's brand is in `vocabulary`
    and its words appear, in order and contiguous, among the title's words. found = the
    matcher returns that brand; wrong = it returns another brand (over those titles, and over
    every title with a gold brand)."""
    vocab = {tuple(normalise(b)) for b in vocabulary}
    n_known = found = wrong_known = wrong_all = n_all = 0
    for title, g in zip(titles, gold):
        if not isinstance(g, str) or not g.strip():
            continue
        n_all += 1
        gt, tt = tuple(normalise(g)), normalise(title)
        got = find(title)
        is_wrong = got is not None and tuple(normalise(got)) != gt
        wrong_all += is_wrong
        if gt in vocab and any(tuple(tt[i:i + len(gt)]) == gt for i in range(len(tt) - len(gt) + 1)):
            n_known += 1
            found += got is not None and not is_wrong
            wrong_known += is_wrong
    return {"titles": n_all, "titles_with_known_brand": n_known,
            "found": found / n_known if n_known else float("nan"),
            "wrong": wrong_known / n_known if n_known else float("nan"),
            "wrong_over_all_titles": wrong_all / n_all if n_all else float("nan")}
