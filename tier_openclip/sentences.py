"""Report sentences as token positions, found from the token ids alone.

The local losses pool each report sentence into one local text embedding (Müller, Kaissis &
Rueckert 2022 and their earlier LoVT align image regions with report sentences). open_clip's
training loop hands the model token ids, not caption text, so the sentences are recovered from
the ids, with the tokenizer's vocabulary (``sentence_vocab``) telling which ids matter:

- Members of a sentence are the caption's content tokens: not a structural token (start/end of
  text, [CLS], [SEP], padding) and before the first end-of-text/[SEP]. A caption cut by the
  context length ends with end-of-text/[SEP] at the cut (both of open_clip's tokenizers put it
  there), so its last sentence is the part that fits.
- A sentence ends at a terminator token ('.', '!', '?', runs of them, optionally followed by a
  closing quote or bracket: CLIP's BPE makes '...' and '.)' single tokens), which belongs to the
  sentence it ends; consecutive terminators (WordPiece's '.', '.', '.') end it once, at the last.
  A bare '.' between two digit tokens is a decimal point ("3.5 cm"): both tokenizers split "3.5"
  into '3', '.', '5', and the phantom's captions give sizes this way.
- Terminators alone (a stray "...") are no sentence. Sentences are numbered 0, 1, … per caption
  in order; ``-1`` marks a position in none.

Known limit: a period inside an abbreviation ("e.g.") ends a sentence, as it would for a
sentence splitter that knows no abbreviations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_TERMINATOR = re.compile(r"[.!?]+[\"')\]]*")
_DIGITS = re.compile(r"\d+")
_WORD_END = "</w>"  # CLIP BPE marks the last piece of a word
_PIECE_MARKS = ("##", "▁", "Ġ")  # WordPiece continuation, SentencePiece and byte-level BPE word starts


@dataclass(frozen=True)
class SentenceVocab:
    """The token ids that decide sentence boundaries, for one tokenizer."""

    terminators: frozenset[int]  # end a sentence
    points: frozenset[int]  # a bare '.': a decimal point between two digit tokens
    digits: frozenset[int]  # tokens made of digits only
    structural: frozenset[int]  # start/end of text, [CLS], [SEP], padding: in no sentence
    stops: frozenset[int]  # end of the caption: nothing after the first one is in a sentence


def _classify(vocab: dict[str, int], text_of) -> tuple[set[int], set[int], set[int]]:
    terminators, points, digits = set(), set(), set()
    for token, index in vocab.items():
        text = text_of(token)
        if text is None:
            continue
        if _TERMINATOR.fullmatch(text):
            terminators.add(index)
            if text == ".":
                points.add(index)
        elif _DIGITS.fullmatch(text):
            digits.add(index)
    return terminators, points, digits


def _clip_text(token: str) -> str | None:
    # Only a word's last piece can end a sentence or be a whole number ('3</w>', '.</w>').
    return token[: -len(_WORD_END)] if token.endswith(_WORD_END) else None


def _hf_text(token: str) -> str:
    for mark in _PIECE_MARKS:
        if token.startswith(mark):
            return token[len(mark) :]
    return token


def sentence_vocab(tokenizer: Any) -> SentenceVocab:
    """The sentence-boundary ids of an open_clip tokenizer: CLIP's BPE or a Hugging Face one."""
    encoder = getattr(tokenizer, "encoder", None)  # open_clip.tokenizer.SimpleTokenizer
    if isinstance(encoder, dict) and hasattr(tokenizer, "eot_token_id"):
        terminators, points, digits = _classify(encoder, _clip_text)
        structural = frozenset(tokenizer.all_special_ids)
        return SentenceVocab(frozenset(terminators), frozenset(points), frozenset(digits), structural,
                             frozenset({tokenizer.eot_token_id}))
    hf = getattr(tokenizer, "tokenizer", None)  # open_clip.tokenizer.HFTokenizer / SigLipTokenizer
    if hf is not None and hasattr(hf, "get_vocab"):
        terminators, points, digits = _classify(hf.get_vocab(), _hf_text)
        ids = {name: getattr(hf, f"{name}_token_id", None) for name in ("pad", "cls", "sep", "bos", "eos")}
        structural = frozenset(i for i in ids.values() if i is not None)
        stops = frozenset(i for i in (ids["sep"], ids["eos"]) if i is not None)
        # A structural token never ends or continues a sentence, whatever its text.
        return SentenceVocab(frozenset(terminators - structural), frozenset(points - structural),
                             frozenset(digits - structural), structural, stops)
    raise TypeError(f"no sentence boundaries for tokenizer {type(tokenizer).__name__}; supported: open_clip's "
                    "SimpleTokenizer (CLIP BPE) and Hugging Face tokenizers wrapped by open_clip")


def _isin(ids: Tensor, members: frozenset[int]) -> Tensor:
    return torch.isin(ids, torch.tensor(sorted(members), dtype=ids.dtype, device=ids.device))


def sentence_ids(text_ids: Tensor, vocab: SentenceVocab, mask: Tensor | None = None) -> Tensor:
    """(N, T) long: each position's sentence number within its caption, -1 if in none.

    ``mask`` (N, T), optional: positions outside it (e.g. the tower's invalid tokens) are in none.
    """
    ids = text_ids.long()
    member = ~_isin(ids, vocab.structural) & (_isin(ids, vocab.stops).cumsum(1) == 0)
    if mask is not None:
        member &= mask.bool()
    digit = _isin(ids, vocab.digits) & member
    decimal = _isin(ids, vocab.points) & F.pad(digit[:, :-1], (1, 0)) & F.pad(digit[:, 1:], (0, 1))
    terminator = _isin(ids, vocab.terminators) & member & ~decimal
    end = terminator & ~F.pad(terminator[:, 1:], (0, 1))  # a run of terminators ends once, at its last
    raw = end.long().cumsum(1) - end.long()  # number of ends strictly before: the sentence a position is in
    # Keep the sentences with at least one member besides terminators, and number them consecutively.
    has_content = torch.zeros_like(raw).scatter_reduce(1, raw, (member & ~terminator).long(), reduce="amax")
    number = has_content.cumsum(1) - 1
    kept = member & has_content.gather(1, raw).bool()
    return torch.where(kept, number.gather(1, raw), -1)
