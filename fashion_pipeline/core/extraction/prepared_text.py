"""Input hygiene for extraction: HTML to text (`core.text_cleaning.strip_html`), length budget, rough language check."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

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
# depends on the arguments alone.
@functools.lru_cache(maxsize=1 << 17)
def prepare(title: str | None, description: str | None, max_chars: int) -> PreparedText:
    """Clean title/description and cut the description to `max_chars` (at a word boundary)."""
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
