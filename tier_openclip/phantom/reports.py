"""The phrase bank and the report-style captions written from it.

One bank (``PHRASES``) gives every word the benchmark uses about a finding:

- the category's ``term`` ("pleural effusion"): the zero-shot label, the positive prompt, and a
  word of every positive phrase; its negation "no {term}" is the negative prompt and the
  commonest negative sentence of the captions (CheXzero's "{x}" vs "no {x}" test then asks
  what the captions taught);
- ``phrases``: how a caption names a present finding — the bare term ("pleural effusion", as
  the zero-shot prompt says it) or a located phrase that also says where ("{severity} {side}
  pleural effusion", "opacity in the {side} {zone} zone"). The phrase a caption uses is the
  grounded phrase of that finding in the grounding set (boxes.csv ``phrase``). The bare term
  puts the prompt's words in the captions (without it, "pleural effusion." alone is a text the
  text tower never saw, and zero-shot AUC swung with the prompt's exact form:
  benchmarks/results/model-choice-amd-epyc-2cpu/), and a grounded phrase without location
  words can be found only by looking at the image.

The grounding layout's captions never negate (``negation_prob`` 0: the negations kept the demo's
text tower at chance, phantom.sampling.GROUNDING_DEFAULTS), so its prompts are the positive
sentences alone (``prompt_set(negations=False)``: no "no {term}" the captions never taught).

A caption states every present finding once (one positive sentence around its phrase), negates
each absent category with probability ``negation_prob`` (mostly as "No {term}."), sometimes
the other side of a lateralised finding ("No left pleural effusion."), in the usual order of a
report (lungs, pleura, heart) or sometimes reordered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .findings import FIELD_OF_VIEW_CM, FINDING_NAMES, PlannedFinding


@dataclass(frozen=True)
class CategoryPhrases:
    """The words for one category. ``phrases`` are templates with the fields ``{severity}``,
    ``{side}``, ``{zone}`` and ``{cm}``; a template naming ``{severity}`` is used only when the
    finding has a severity word. ``other_negatives``: negative sentences besides "No {term}."
    ``countable``: takes an article ("There is a ..."; cardiomegaly does not)."""

    term: str
    phrases: tuple[str, ...]
    other_negatives: tuple[str, ...] = ()
    countable: bool = True


PHRASES: dict[str, CategoryPhrases] = {
    "opacity": CategoryPhrases(
        "opacity",
        ("opacity", "{side} {zone} zone opacity", "{severity} {side} {zone} zone opacity",
         "opacity in the {side} {zone} zone", "{severity} opacity in the {side} {zone} zone"),
        ("No focal consolidation.",),
    ),
    "bulla": CategoryPhrases(
        "bulla",
        ("bulla", "{side} {zone} zone bulla", "{cm} cm {side} {zone} zone bulla", "{cm} cm bulla in the {side} {zone} zone",
         "large bulla in the {side} {zone} zone"),
    ),
    "pleural effusion": CategoryPhrases(
        "pleural effusion",
        ("pleural effusion", "{side} pleural effusion", "{severity} {side} pleural effusion"),
        ("The costophrenic angles are sharp.",),
    ),
    "cardiomegaly": CategoryPhrases(
        "cardiomegaly", ("cardiomegaly", "{severity} cardiomegaly"), ("Heart size is normal.",), countable=False,
    ),
    "pneumothorax": CategoryPhrases(
        "pneumothorax",
        ("pneumothorax", "{side} pneumothorax", "{severity} {side} pneumothorax", "{side} apical pneumothorax",
         "{severity} {side} apical pneumothorax"),
    ),
}
assert tuple(PHRASES) == FINDING_NAMES  # one entry per category, in label order

#: Sentences around a positive phrase ({p}: the phrase, {P}: capitalised, {a}: its article).
POSITIVE_SENTENCES = ("{P}.", "There is {a}{p}.", "{P} is seen.")
#: Sentences negating a category ({t}: its term).
NEGATIVE_SENTENCES = ("No {t}.", "There is no {t}.", "No {t} is seen.")
#: Share of negations that use NEGATIVE_SENTENCES (the prompt's "no {term}") rather than the
#: category's other negatives.
NO_TERM_SHARE = 0.8
#: Probability that a report on a lateralised finding also negates the other side.
OTHER_SIDE_PROB = 0.3
LATERALISED = ("pleural effusion", "pneumothorax")
NORMAL_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
)
_SECTION = {"opacity": 0, "bulla": 0, "pleural effusion": 1, "pneumothorax": 1, "cardiomegaly": 2}


def prompt_set(negations: bool = True) -> dict[str, dict[str, list[str]]]:
    """Zero-shot prompts of every category in the format of tier_openclip.evaluation.prompts (prompt files,
    ``zeroshot_evaluate(prompts=...)``): with ``negations`` (captions that negate absent findings)
    CheXzero's ``{"positive": [term], "negative": ["no term"]}``; without, the sentences that state
    the finding in the captions (``positive_sentences`` of the bare term) and no negative prompt,
    so a label is scored by the image's cosine with them alone: "no {term}" would be a text the
    captions never taught."""
    if negations:
        return {name: {"positive": [p.term], "negative": [f"no {p.term}"]} for name, p in PHRASES.items()}
    return {name: {"positive": positive_sentences(name, p.term), "negative": []} for name, p in PHRASES.items()}


@dataclass(frozen=True)
class ReportSentence:
    """One sentence of a caption and which categories it states present or absent (a sentence
    about one side of a present category, "No left pleural effusion.", denies none)."""

    text: str
    affirms: frozenset[str] = frozenset()
    denies: frozenset[str] = frozenset()


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def size_cm(size: float) -> str:
    """A lesion diameter (fraction of the image width) in centimetres, to the half centimetre."""
    return f"{round(size * FIELD_OF_VIEW_CM * 2) / 2:g}"


def phrase_options(planned: PlannedFinding) -> list[str]:
    """The located phrases that may name this finding (one is picked per sample)."""
    bank = PHRASES[planned.name]
    fields = {"severity": planned.severity, "side": planned.side, "zone": planned.zone,
              "cm": size_cm(planned.size) if planned.name == "bulla" else None}
    return [template.format(**fields) for template in bank.phrases
            if planned.severity is not None or "{severity}" not in template]


def pick_phrase(rng: np.random.Generator, planned: PlannedFinding, bare: bool = False) -> str:
    """The phrase naming this finding: one of :func:`phrase_options`, or with ``bare`` its term
    (no draw: the grounding layout names every finding by its category alone)."""
    if bare:
        return PHRASES[planned.name].term
    return _pick(rng, phrase_options(planned))


def positive_sentences(name: str, phrase: str) -> list[str]:
    """The sentences that may state a finding named by ``phrase``; each contains the phrase."""
    article = ("an " if phrase[0] in "aeiou" else "a ") if PHRASES[name].countable else ""
    return [t.format(p=phrase, P=_cap(phrase), a=article) for t in POSITIVE_SENTENCES]


def negative_sentences(name: str) -> list[str]:
    """The sentences that may negate an absent category: "No {term}." forms first."""
    term = PHRASES[name].term
    return [t.format(t=term) for t in NEGATIVE_SENTENCES] + list(PHRASES[name].other_negatives)


def other_side_sentence(name: str, side: str) -> str:
    """Negation of the other side of a present lateralised finding."""
    other = {"right": "left", "left": "right"}[side]
    return f"No {other} {PHRASES[name].term}."


def _negation(rng: np.random.Generator, name: str, bare: bool = False) -> str:
    options = negative_sentences(name)
    if bare or not PHRASES[name].other_negatives or rng.random() < NO_TERM_SHARE:
        return _pick(rng, options[: len(NEGATIVE_SENTENCES)])
    return _pick(rng, options[len(NEGATIVE_SENTENCES):])


def report_sentences(rng: np.random.Generator, findings: Sequence[PlannedFinding],
                     negation_prob: float = 0.6, bare: bool = False) -> list[ReportSentence]:
    """A report for these findings (each with its ``phrase``): one positive sentence per finding,
    each absent category negated with probability ``negation_prob``, sections in the usual order
    (lungs, pleura, heart) or sometimes reordered. A normal study may end in "No acute
    cardiopulmonary process." (always, when nothing else was said).

    ``bare`` (the grounding layout): no word says where — no other-side negation ("No left
    pleural effusion.") and only the "No {term}." negations (not "The costophrenic angles are
    sharp.", which names a place); the phrases are expected to be bare terms too."""
    present = {f.name for f in findings}
    sections: list[list[ReportSentence]] = [[], [], []]
    for planned in findings:
        text = _pick(rng, positive_sentences(planned.name, planned.phrase))
        sections[_SECTION[planned.name]].append(ReportSentence(text, affirms=frozenset({planned.name})))
        if not bare and planned.name in LATERALISED and rng.random() < OTHER_SIDE_PROB:
            sections[_SECTION[planned.name]].append(ReportSentence(other_side_sentence(planned.name, planned.side)))
    for name in FINDING_NAMES:
        if name not in present and rng.random() < negation_prob:
            sections[_SECTION[name]].append(ReportSentence(_negation(rng, name, bare), denies=frozenset({name})))
    order = [0, 1, 2]
    if rng.random() < 0.25:
        order = [2, 0, 1]  # heart first, as some radiologists dictate
    sentences = [s for i in order for s in sections[i]]
    if rng.random() < 0.15:
        sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    if not present and (not sentences or rng.random() < 0.5):
        sentences.append(ReportSentence(_pick(rng, NORMAL_IMPRESSIONS), denies=frozenset(FINDING_NAMES)))
    return sentences
