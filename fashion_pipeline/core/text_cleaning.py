"""Text normalisation shared by ingestion, extraction and scoring: the one HTML-to-text step."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_WS = re.compile(r"\s+")
_BLOCK_TAGS = {"p", "br", "li", "div", "ul", "ol", "tr", "h1", "h2", "h3", "h4", "strong", "b"}
# Tags written with a space after "<" ("< b>Style Note< /b>", in a few Kaggle descriptions) are text
# to an HTML parser; these known names are removed like real tags.
_SPACED_TAG = re.compile(r"<\s+/?\s*(%s|i|em|u|span)\s*/?\s*>" % "|".join(sorted(_BLOCK_TAGS)), re.I)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:  # noqa: ANN001 - HTMLParser API
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(value: object) -> str:
    """HTML to plain text: tags removed, entities decoded, block tags become line breaks,
    runs of spaces collapsed. Non-strings give ''."""
    if not isinstance(value, str) or not value:
        return ""
    if "<" not in value and "&" not in value:
        text = value
    else:
        value = _SPACED_TAG.sub(lambda m: "\n" if m.group(1).lower() in _BLOCK_TAGS else " ", value)
        parser = _TextExtractor()
        try:
            parser.feed(value)
            parser.close()
            text = "".join(parser.parts)
        except Exception:  # malformed markup: fall back to a crude tag strip
            text = html.unescape(re.sub(r"<[^>]*>", " ", value))
    lines = (_WS.sub(" ", line).strip() for line in text.replace("\x00", "").splitlines())
    return "\n".join(line for line in lines if line)


def normalise_space(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return _WS.sub(" ", value.replace("\x00", "")).strip()
