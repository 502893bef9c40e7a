"""Report sentences from token ids: against the sentences' own tokenizations, and a loop-by-loop definition."""

from __future__ import annotations

import random

import pytest
import torch

from tier_openclip.sentences import SentenceVocab, sentence_ids, sentence_vocab

SENTENCES = [
    "There is a 3.5 cm bulla in the left upper zone.",
    "No pleural effusion...",
    "Heart size is normal!",
    "Mild right lower zone opacity",  # the caption's last sentence has no period
]


@pytest.fixture(scope="module")
def clip_tokenizer():
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A WordPiece tokenizer that knows every word of SENTENCES and the digits, wrapped by open_clip."""
    import open_clip
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    directory = tmp_path_factory.mktemp("wordpiece")
    words = {w.strip(".!").lower() for s in SENTENCES for w in s.replace("3.5", "").split()}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", "?", *"0123456789", *sorted(words - {""})]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    pieces = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)
    BertTokenizerFast(tokenizer_object=pieces._tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                      sep_token="[SEP]", mask_token="[MASK]").save_pretrained(directory)
    return open_clip.tokenizer.HFTokenizer(str(directory), context_length=64)


def own_tokens(tokenizer, sentence: str) -> list[int]:
    """The ids a sentence gets when tokenized alone, without start/end or [CLS]/[SEP]."""
    if hasattr(tokenizer, "encoder"):
        return tokenizer.encode(sentence)
    return tokenizer.tokenizer(sentence, add_special_tokens=False).input_ids


def spans(ids: torch.Tensor, numbers: torch.Tensor) -> list[list[int]]:
    """The ids of each sentence of one caption, in order."""
    return [ids[numbers == k].tolist() for k in range(int(numbers.max()) + 1)]


@pytest.mark.parametrize("which", ["clip", "hf"])
def test_each_sentence_gets_the_tokens_it_has_alone(which, clip_tokenizer, hf_tokenizer):
    tokenizer = clip_tokenizer if which == "clip" else hf_tokenizer
    vocab = sentence_vocab(tokenizer)
    ids = tokenizer([" ".join(SENTENCES), SENTENCES[2]], context_length=64)
    numbers = sentence_ids(ids, vocab)
    assert spans(ids[0], numbers[0]) == [own_tokens(tokenizer, s) for s in SENTENCES]  # "3.5" stays in one
    assert spans(ids[1], numbers[1]) == [own_tokens(tokenizer, SENTENCES[2])]
    structural = torch.isin(ids, torch.tensor(sorted(vocab.structural)))
    assert structural.any() and torch.all(numbers[structural] == -1)  # start/end, [CLS]/[SEP], padding
    # every member of a sentence is contiguous with it: numbers only grow along the caption
    members = numbers[0][numbers[0] >= 0]
    assert torch.all(members[1:] >= members[:-1])


@pytest.mark.parametrize("which", ["clip", "hf"])
def test_a_sentence_cut_by_the_context_length_keeps_the_part_that_fits(which, clip_tokenizer, hf_tokenizer):
    tokenizer = clip_tokenizer if which == "clip" else hf_tokenizer
    first, second = own_tokens(tokenizer, SENTENCES[0]), own_tokens(tokenizer, SENTENCES[2])
    length = 2 + len(first) + 2  # start/[CLS], the first sentence, two tokens of the second, end/[SEP]
    ids = tokenizer([f"{SENTENCES[0]} {SENTENCES[2]}"], context_length=length)
    numbers = sentence_ids(ids, sentence_vocab(tokenizer))
    assert spans(ids[0], numbers[0]) == [first, second[:2]]
    assert numbers[0, -1] == -1  # the end token the tokenizer puts at the cut


def test_mask_and_stop_tokens_bound_the_sentences(clip_tokenizer):
    vocab = sentence_vocab(clip_tokenizer)
    ids = clip_tokenizer([" ".join(SENTENCES[:2])], context_length=40)
    numbers = sentence_ids(ids, vocab)
    eot = int((ids[0] == clip_tokenizer.eot_token_id).nonzero()[0])
    assert torch.all(numbers[0, eot:] == -1)  # padding after end-of-text (CLIP pads with id 0, '!')
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 1:3] = False
    masked = sentence_ids(ids, vocab, mask)
    assert torch.all(masked[0, 1:3] == -1) and torch.equal(masked[0, 3:], numbers[0, 3:])


def test_unsupported_tokenizer_is_named():
    with pytest.raises(TypeError, match="no sentence boundaries for tokenizer object"):
        sentence_vocab(object())


# ---- the vectorised numbering against a loop over the positions ------------------------------

END, POINT, DIGIT, STRUCT, STOP, WORD = 1, 2, 3, 4, 5, 6
TOY = SentenceVocab(terminators=frozenset({END, POINT}), points=frozenset({POINT}), digits=frozenset({DIGIT}),
                    structural=frozenset({STRUCT, STOP}), stops=frozenset({STOP}))


def numbers_by_loop(ids: list[int], mask: list[bool]) -> list[int]:
    member, stopped = [], False
    for i, m in zip(ids, mask):
        stopped = stopped or i in TOY.stops
        member.append(m and not stopped and i not in TOY.structural)

    def terminates(p: int) -> bool:
        decimal = (ids[p] in TOY.points and 0 < p < len(ids) - 1 and member[p - 1] and member[p + 1]
                   and ids[p - 1] in TOY.digits and ids[p + 1] in TOY.digits)
        return member[p] and ids[p] in TOY.terminators and not decimal

    def ends_here(p: int) -> bool:  # the last of a run of terminators
        return terminates(p) and not (p + 1 < len(ids) and terminates(p + 1))

    sentences, current = [], []
    for p in range(len(ids)):
        if member[p]:
            current.append(p)
            if ends_here(p):
                sentences.append(current)
                current = []
    sentences.append(current)
    out = [-1] * len(ids)
    with_content = [s for s in sentences if any(not terminates(p) for p in s)]
    for k, sentence in enumerate(with_content):
        for p in sentence:
            out[p] = k
    return out


def test_numbering_matches_the_loop_definition():
    rng = random.Random(0)
    rows, masks = [], []
    for _ in range(200):
        rows.append([rng.choice([END, POINT, DIGIT, DIGIT, STRUCT, STOP, WORD, WORD, WORD]) for _ in range(12)])
        masks.append([rng.random() < 0.9 for _ in range(12)])
    ids, mask = torch.tensor(rows), torch.tensor(masks)
    ours = sentence_ids(ids, TOY, mask)
    assert ours.tolist() == [numbers_by_loop(r, m) for r, m in zip(rows, masks)]
    assert (ours.max(dim=1).values >= 2).any()  # the cases include several sentences per caption
