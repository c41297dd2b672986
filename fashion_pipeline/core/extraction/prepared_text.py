"""Input hygiene for extraction: HTML to text (`core.text_cleaning.strip_html`), length budget, rough language check."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from fashion_pipeline.core.atomic import read_stamped_pickle, write_stamped_pickle
from fashion_pipeline.core.text_cleaning import strip_html

# Common English function words; a text of some length with none of them is probably not English.
_EN_WORDS = frozenset(
    "an the and or of in on with for to is are this that from your you it its has have made by at "
    "as be can will into fit wear wash do not".split()
    # Listing English is telegraphic ("Navy jacket, long sleeves, zip closure"): common catalogue
    # words count as English too, so terse listings are not flagged.
    + "men women boys girls unisex kids black white blue navy red green grey pink brown yellow "
    "shirt shirts top tops dress shoes shoe bag jacket jeans trousers shorts socks watch sleeves "
    "sleeve neck collar pocket pockets zip closure front back casual sports solid printed striped "
    "cotton polyester leather lining strap straps sole upper round long short".split())


_FOREIGN_WORDS = frozenset(
    "de la el los las del con para por una unos une des et avec pour sur dans le les du und mit der die "
    "das für aus ein eine den dem il della delle per che sono em com uma os da do".split()) - _EN_WORDS
_WORD = re.compile(r"[^\W\d_]+")
assert min(map(len, _EN_WORDS | _FOREIGN_WORDS)) > 1  # (see looks_non_english)


@dataclass(frozen=True)
class PreparedText:
    title: str
    description: str
    truncated: bool
    empty_description: bool
    non_english: bool


def looks_non_english(text: str) -> bool:
    """Heuristic: mostly non-ASCII letters, or more Spanish/French/German/Italian/Portuguese function
    words than English (catalogue) words. Telegraphic English listings have few function words,
    so the absence of English words alone is not evidence."""
    # "Ã", "Â" are mojibake (UTF-8 read as Latin-1) in these catalogues, not a foreign language.
    if not text.isascii():  # (an ASCII text's letters are all ASCII: nothing to count)
        letters = [c for c in text if c.isalpha() and c not in "ÃÂ"]
        if len(letters) >= 20 and sum(c.isascii() for c in letters) / len(letters) < 0.7:
            return True
    # Words of two or more letters: the sets below hold no one-letter word, so membership counts them alone.
    words = _WORD.findall(text.lower())
    foreign = sum(map(_FOREIGN_WORDS.__contains__, words))
    return foreign >= 2 and foreign > sum(map(_EN_WORDS.__contains__, words))


# One run prepares each catalogue text several times (the extractor's training, product_attributes'
# cache keys, the listing evaluation): 4.1 s per pass over the full development catalogue's 43.7k
# products, 0.03 s from this memo (39.6k distinct texts, ~30 MB). The result is immutable (frozen) and
# depends on the arguments alone. The first pass of a run reads the last run's results from a
# `PreparedTextStore` file where one was loaded (`_stored`).
@functools.lru_cache(maxsize=1 << 17)
def prepare(title: str | None, description: str | None, max_chars: int) -> PreparedText:
    """Clean title/description and cut the description to `max_chars` (at a word boundary)."""
    if _stored:
        hit = _stored.get(text_key(title, description, max_chars))
        if hit is not None:
            return hit
    return _prepare(title, description, max_chars)


def _prepare(title: str | None, description: str | None, max_chars: int) -> PreparedText:
    t = " ".join(strip_html(title).split())
    d = strip_html(description)
    truncated = len(d) > max_chars
    if truncated:
        cut = d[:max_chars]
        space = cut.rfind(" ")
        d = cut[:space] if space > max_chars * 0.8 else cut
    return PreparedText(
        title=t,
        description=d,
        truncated=truncated,
        empty_description=not d.strip(),
        # The description decides when it has a few words: titles are brand + product-type English.
        non_english=looks_non_english(d if len(d.split()) >= 5 else f"{t} {d}"),
    )


def text_key(title: str | None, description: str | None, max_chars: int) -> bytes:
    """What a stored result is looked up by: a digest of `prepare`'s arguments."""
    return hashlib.blake2b(repr((title, description, int(max_chars))).encode("utf-8", "surrogatepass"),
                           digest_size=16).digest()


_stored: dict[bytes, PreparedText] = {}  # text_key -> result, from the last `PreparedTextStore.load`
STORE_FORMAT = 1


def _code_stamp() -> str:
    """The code a stored result came from: this module, the HTML cleaning it calls and the Python whose
    HTML parser that uses (a change to any makes the file unreadable to the next run, which prepares every
    text again)."""
    import sys

    from fashion_pipeline.core import text_cleaning

    h = hashlib.sha256(f"format={STORE_FORMAT};python={sys.version_info[:3]}".encode())
    for module_file in (__file__, text_cleaning.__file__):
        h.update(Path(module_file).read_bytes())
    return h.hexdigest()


class PreparedTextStore:
    """`prepare`'s results for the catalogue, kept between runs in one file (beside the token memos): the
    extractor's training prepares every catalogue text, ~3.3 s on the full development data's 43.7k
    products on a 2-core machine, and a retrain after new products meets the same texts again.

    `load` makes `prepare` take a text's result from the file (until the next `load`, in this process);
    `save` writes the results of the texts given (the file follows the catalogue). A result depends
    only on the text and this code: a file written by other code (`_code_stamp`) or in another format is
    not read, and an unreadable one is reported in ``note`` and rewritten by the next `save`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.note = f"{self.path.name}: not loaded"
        self._read_keys = b""  # the file's texts, in its order, when loaded

    def load(self) -> int:
        """Serve `prepare` from the file; returns how many results it holds (0: none, stale or unreadable)."""
        global _stored
        _stored = {}
        self._read_keys = b""
        prepare.cache_clear()  # results computed before the load stay correct, but the memo starts afresh
        loaded, why = read_stamped_pickle(self.path, _code_stamp(), _parse_store)
        if loaded is None:
            self.note = why
            return 0
        _stored, self._read_keys = loaded
        self.note = f"{self.path.name}: {len(_stored)} prepared texts read"
        return len(_stored)

    def save(self, calls: list[tuple[str | None, str | None, int]], results: list[PreparedText]) -> None:
        """Write ``results`` (`prepare` of each of ``calls``' arguments), one entry per distinct call;
        not when they are the texts the file held when loaded, in the same order (nothing to add or drop)."""
        import numpy as np

        seen: dict[bytes, PreparedText] = {}
        for args, r in zip(calls, results, strict=True):
            seen.setdefault(text_key(*args), r)
        keys = b"".join(seen)
        if keys == self._read_keys:
            self.note += " (the same texts: not rewritten)"
            return
        values = list(seen.values())
        failed = write_stamped_pickle(self.path, _code_stamp(), {
            "keys": keys, "titles": [r.title for r in values], "descriptions": [r.description for r in values],
            "flags": np.array([r.truncated | r.empty_description << 1 | r.non_english << 2 for r in values],
                              dtype=np.uint8)})
        if failed:
            self.note += f"; {failed}"


def _parse_store(saved: dict) -> tuple[dict[bytes, PreparedText], bytes]:
    """({text_key: result}, the keys in the file's order) of a `PreparedTextStore` file, checked."""
    keys, titles, descriptions, flags = saved["keys"], saved["titles"], saved["descriptions"], saved["flags"]
    if not (len(keys) == 16 * len(titles) == 16 * len(descriptions) == 16 * len(flags)):
        raise ValueError("keys and results disagree")
    return ({keys[16 * i:16 * (i + 1)]: PreparedText(t, d, bool(f & 1), bool(f & 2), bool(f & 4))
             for i, (t, d, f) in enumerate(zip(titles, descriptions, flags.tolist()))}, keys)
