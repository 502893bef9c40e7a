"""Positive / negative prompts for zero-shot chest X-ray classification (the CheXzero protocol).

Defaults, per label (lower-cased, whitespace collapsed):
- ``"{label}"`` vs ``"no {label}"``, as CheXzero does (``"pleural effusion"`` vs ``"no pleural effusion"``);
- a label that is itself a negation, ``"No Finding"``, is not negated twice: its positive is
  ``"no finding"`` and its negative the un-negated ``"finding"``;
- ``"normal"`` (PadChest) is opposed by ``"abnormal"`` rather than ``"no normal"``.

A prompt file replaces these for the labels it names. It is JSON mapping a label to its positive
and negative prompt lists; each list is an ensemble (mean of the normalised prompt embeddings,
renormalised, as CheXzero does)::

    {
      "Pleural Effusion": {
        "positive": ["pleural effusion", "there is a pleural effusion"],
        "negative": ["no pleural effusion", "no evidence of pleural effusion"]
      },
      "No Finding": {"positive": ["no acute cardiopulmonary process"], "negative": ["findings"]}
    }

An empty negative list (``"negative": []``) scores a label by its positive prompt alone (the
image's cosine with it): for captions that never negate, where "no {label}" is a text the model
never saw (the demo's phantom: tier_openclip/phantom/reports.py).

Label names match case-insensitively; labels the file does not name keep the defaults, and file
entries for labels not being evaluated are ignored (so one file can serve CheXpert and PadChest).

Named prompt sets, given by name instead of a file (a file of that name: write ``./authors``):

- ``authors``: the TIER authors' protocol (tier_openclip/evaluation/authors_protocol.py): CheXpert's 5
  competition labels with their sentence sets, PadChest's 57 findings; it depends on the dataset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Union

PromptSet = dict[str, list[str]]  # {"positive": [...], "negative": [...]}
PromptsArg = Union[str, Path, Mapping[str, Mapping[str, list[str]]], None]

# Prompt sets chosen by name; each maps a dataset ("chexpert", "padchest") to its prompts.
NAMED_PROMPT_SETS = ("authors",)

# Labels whose natural opposite is not "no {label}".
OPPOSITES = {"normal": "abnormal"}
logger = logging.getLogger("tier_openclip")


def _clean(label: str) -> str:
    return " ".join(label.lower().split())


def default_prompts(label: str) -> PromptSet:
    """CheXzero's "{label}" vs "no {label}", without negating an already negated label."""
    text = _clean(label)
    if text.startswith("no "):
        return {"positive": [text], "negative": [text[3:]]}
    if text in OPPOSITES:
        return {"positive": [text], "negative": [OPPOSITES[text]]}
    return {"positive": [text], "negative": [f"no {text}"]}


def validate_prompts(prompts: Mapping, source: str = "prompts") -> dict[str, PromptSet]:
    """Check the {label: {"positive": [...], "negative": [...]}} format; ValueError says what is wrong."""
    if not isinstance(prompts, Mapping):
        raise ValueError(f"{source}: expected a JSON object {{label: {{\"positive\": [...], \"negative\": [...]}}}}")
    checked = {}
    for label, entry in prompts.items():
        if not isinstance(entry, Mapping) or set(entry) != {"positive", "negative"}:
            raise ValueError(f"{source}: entry {label!r} must have exactly the keys \"positive\" and \"negative\"")
        for kind in ("positive", "negative"):
            texts = entry[kind]
            if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise ValueError(f"{source}: {label!r} {kind} must be a list of non-empty strings")
            if kind == "positive" and not texts:
                raise ValueError(f"{source}: {label!r} positive must name at least one prompt")
        checked[str(label)] = {"positive": list(entry["positive"]), "negative": list(entry["negative"])}
    return checked


def load_prompt_file(path: str | Path) -> dict[str, PromptSet]:
    """A prompt file (format in this module's docstring), validated."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"prompt file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompt file {path} is not valid JSON: {exc}") from None
    return validate_prompts(data, source=f"prompt file {path}")


def named_prompt_set(name: str, dataset: str | None) -> dict[str, PromptSet]:
    """The named prompt set ``name`` (one of NAMED_PROMPT_SETS) for ``dataset``; ValueError
    naming what is wrong otherwise."""
    if name == "authors":
        from tier_openclip.evaluation.authors_protocol import authors_prompts

        return authors_prompts(dataset or "")
    raise ValueError(f"no prompt set named {name!r}; named sets: {', '.join(NAMED_PROMPT_SETS)}")


def is_named_prompt_set(prompts: PromptsArg) -> bool:
    """Whether ``prompts`` names a prompt set rather than a file or a mapping."""
    return isinstance(prompts, str) and prompts in NAMED_PROMPT_SETS


def resolve_prompts(labels: Iterable[str], prompts: PromptsArg = None, dataset: str | None = None) -> dict[str, PromptSet]:
    """The prompt set of each label: from ``prompts`` (a named set, a file path or a mapping) where
    it names the label, the defaults otherwise. ``dataset`` chooses a named set's prompts."""
    labels = list(labels)
    given: dict[str, PromptSet] = {}
    source = "the prompt file"
    if is_named_prompt_set(prompts):
        given = named_prompt_set(str(prompts), dataset)
        source = f"the {prompts!r} prompt set"
    elif isinstance(prompts, (str, Path)):
        given = load_prompt_file(prompts)
    elif prompts is not None:
        given = validate_prompts(prompts)
    by_key = {_clean(name): entry for name, entry in given.items()}
    resolved = {label: by_key.get(_clean(label)) or default_prompts(label) for label in labels}
    if given:
        defaulted = [label for label in labels if _clean(label) not in by_key]
        if defaulted:
            logger.info("zero-shot prompts: default prompts for %s (not in %s)", ", ".join(defaulted), source)
    return resolved
