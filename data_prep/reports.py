"""Radiology report text: decoding, section parsing and the choice of training text.

MIMIC-CXR reports are free text with upper-case section headers at the start of a line
(``FINDINGS:``, ``IMPRESSION:``, ``INDICATION:``, ...), often a ``FINAL REPORT`` title line,
``___`` where the dataset authors removed protected health information, and irregular
spacing. The parser follows the rules of the dataset authors' own section parser (MIMIC-CXR's
``section_parser.py``): a header is an upper-case phrase followed by a colon at the start of a
line; header names are normalised (``IMPRESSIONS``, ``CONCLUSION`` and ``FINDINGS AND
IMPRESSION`` count as the impression, ``FINDING`` as the findings, ...); and when a header
repeats, the *last* section with that name wins.

Everything here is a pure function of its input; nothing reads files.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass

TEXT_MODES = ("impression", "findings", "findings+impression", "impression-or-findings")

# Header at the start of a line (after optional spaces): upper-case words, digits and the
# punctuation MIMIC uses inside header names, then a colon. "FINAL REPORT" has no colon and is
# therefore not a header; parse_sections() drops it as a title line (_TITLE_LINE).
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ()/,&'-]*[A-Z)])[ \t]*:", re.MULTILINE)
_TITLE_LINE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")

# Normalised section names (lower-case header -> canonical name). Unlisted headers keep their
# lower-cased name; the few misspellings MIMIC-CXR contains are listed as the authors list them.
_SECTION_ALIASES: dict[str, str] = {
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "findings and impression": "impression",
    "findings/impression": "impression",
    "findings/ impression": "impression",
    "impresson": "impression",
    "impresion": "impression",
    "impession": "impression",
    "imprssion": "impression",
    "impressoin": "impression",
    "imoression": "impression",
    "imprression": "impression",
    "imperssion": "impression",
    "mpression": "impression",
    "findings": "findings",
    "finding": "findings",
    "findins": "findings",
    "findngs": "findings",
    "findnings": "findings",
    "finidngs": "findings",
    "findgings": "findings",
    "findindgs": "findings",
    "reference findings": "findings",
    "chest, two views": "findings",
    "indication": "indication",
    "reason for examination": "indication",
    "reason for exam": "indication",
    "clinical indication": "indication",
    "history": "history",
    "clinical history": "history",
    "clinical information": "history",
    "patient history": "history",
    "comparison": "comparison",
    "comparisons": "comparison",
    "comparison exam": "comparison",
    "comparison film": "comparison",
    "reference exam": "comparison",
    "examination": "examination",
    "exam": "examination",
    "type of examination": "examination",
    "technique": "technique",
    "wet read": "wet read",
    "wetread": "wet read",
    "recommendation": "recommendations",
    "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "notification": "notification",
    "addendum": "addendum",
}


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str  # "utf-8" or the fallback that decoded it

    @property
    def used_fallback(self) -> bool:
        return self.encoding != "utf-8"


def decode_report(raw: bytes) -> DecodedText:
    """Decode report bytes: UTF-16 when the file starts with a UTF-16 byte-order mark (what
    Windows editors save as "Unicode"); else UTF-8 (a BOM is dropped); if that fails,
    Windows-1252; if that fails too (the five bytes cp1252 leaves undefined), Latin-1, which
    decodes every byte. MIMIC-CXR reports are ASCII, so anything but UTF-8 marks a damaged or
    foreign file; it is counted in the manifest (note ``report_not_utf8``) rather than failed,
    since the text is still usable."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return DecodedText(raw.decode("utf-16"), "utf-16")
        except UnicodeDecodeError:
            pass  # a BOM-like start of a cp1252/latin-1 file ("\xff\xfe" is "ÿþ")
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return DecodedText(raw.decode(encoding), "utf-8" if encoding == "utf-8-sig" else encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def normalize_section_name(header: str) -> str:
    """Canonical name of a section header (``"IMPRESSIONS"`` -> ``"impression"``)."""
    name = _WHITESPACE.sub(" ", header.strip().lower())
    if name in _SECTION_ALIASES:
        return _SECTION_ALIASES[name]
    # As in the authors' parser, a header naming a main section counts as that section
    # ("FINAL IMPRESSION", "PRELIMINARY FINDINGS", ...).
    for main in ("impression", "findings"):
        if main in name:
            return main
    return name


def clean_text(text: str) -> str:
    """Drop NUL characters (a damaged file's; a caption is C-string text to many tools), collapse
    every run of whitespace (spaces, tabs, line breaks) to one space and strip. ``___``
    (de-identified spans) is kept as written: it marks where a name or date was and appears in
    every MIMIC-CXR text a model will ever see."""
    return _WHITESPACE.sub(" ", text.replace("\0", "")).strip()


def parse_sections(text: str) -> dict[str, str]:
    """Split a report into ``{canonical section name: cleaned text}``.

    Text before the first header is the ``"preamble"``. When a name occurs more than once the
    last occurrence wins, as in the dataset authors' parser (a repeated ``FINDINGS:`` is usually
    an empty template line followed by the real one, so an empty later section does not replace
    a non-empty earlier one of the same name). A ``FINAL REPORT`` title line is dropped.
    """
    text = _TITLE_LINE.sub("", text.replace("\0", "").replace("\r\n", "\n").replace("\r", "\n"))
    sections: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    preamble = clean_text(text[: matches[0].start()] if matches else text)
    if preamble:
        sections["preamble"] = preamble
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = normalize_section_name(match.group(1))
        body = clean_text(text[match.end() : end])
        if body or name not in sections:
            sections[name] = body
    return sections


@dataclass(frozen=True)
class TextChoice:
    """The training text of one report, or why there is none (``reason``)."""

    text: str | None
    reason: str | None = None  # REPORT_SECTION_MISSING or REPORT_SECTION_EMPTY


REPORT_SECTION_MISSING = "report_section_missing"
REPORT_SECTION_EMPTY = "report_section_empty"


def choose_text(sections: Mapping[str, str], mode: str) -> TextChoice:
    """The text ``--text MODE`` trains on.

    - ``impression``: the impression section.
    - ``findings``: the findings section.
    - ``findings+impression``: both, findings first, joined by one space; either alone if only
      one is present and non-empty.
    - ``impression-or-findings``: the impression, or the findings when there is no non-empty
      impression.

    Without the section the reason is ``report_section_missing``; with the section present but
    empty after cleaning it is ``report_section_empty``.
    """
    if mode not in TEXT_MODES:
        raise ValueError(f"unknown text mode {mode!r}; expected one of {', '.join(TEXT_MODES)}")
    wanted = {
        "impression": ("impression",),
        "findings": ("findings",),
        "findings+impression": ("findings", "impression"),
        "impression-or-findings": ("impression", "findings"),
    }[mode]
    present = [name for name in wanted if name in sections]
    if not present:
        return TextChoice(None, REPORT_SECTION_MISSING)
    bodies = [sections[name] for name in present if sections[name]]
    if not bodies:
        return TextChoice(None, REPORT_SECTION_EMPTY)
    if mode == "impression-or-findings":
        return TextChoice(bodies[0])
    return TextChoice(" ".join(bodies))
