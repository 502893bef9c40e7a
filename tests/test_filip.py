"""Issue 20: FILIP's token-wise contrastive term (tier_openclip/filip.py), ``--loss filip`` and the
demo's ``--pretrain-loss filip``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import refused

from tier_openclip.demo.design import DemoOptions, pretrain_flags, run_name, training_command
from tier_openclip.errors import UsageError
from tier_openclip.filip import FilipTerms, token_wise_similarity
from tier_openclip.loss import ContrastiveTokenLoss
from tier_openclip.training import plugin


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def loop_similarity(text, image, mask) -> list[list[float]]:
    """FILIP's s_ij written out token by token and patch by patch, padding tokens skipped."""
    n = text.shape[0]
    s = [[0.0] * n for _ in range(n)]
    for i in range(n):
        tokens = [text[i, t] for t in range(text.shape[1]) if mask[i, t]]
        for j in range(n):
            patches = [image[j, p] for p in range(image.shape[1])]
            text_side = sum(max(_cos(t, p) for p in patches) for t in tokens) / len(tokens)
            image_side = sum(max(_cos(t, p) for t in tokens) for p in patches) / len(patches)
            s[i][j] = (text_side + image_side) / 2
    return s


def loop_loss(s: list[list[float]], temperature: float) -> float:
    n = len(s)
    rows = [-math.log(math.exp(s[i][i] / temperature) / sum(math.exp(s[i][j] / temperature) for j in range(n)))
            for i in range(n)]
    cols = [-math.log(math.exp(s[j][j] / temperature) / sum(math.exp(s[i][j] / temperature) for i in range(n)))
            for j in range(n)]
    return (sum(rows) / n + sum(cols) / n) / 2


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(4, 7, 5, generator=gen, dtype=torch.float64)
    image = torch.randn(4, 6, 5, generator=gen, dtype=torch.float64)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, 2:] = False
    mask[3, 0] = False  # a causal tower's start token: left out like padding
    return text, image, mask


def test_similarity_and_loss_equal_the_loop_definition(batch):
    text, image, mask = batch
    expected = loop_similarity(text, image, mask)
    assert torch.allclose(token_wise_similarity(text, image, mask).double(), torch.tensor(expected, dtype=torch.float64),
                          atol=1e-5)
    losses, metrics = FilipTerms(weight=0.5, temperature=0.1)(text, image, mask)
    assert losses.keys() == {"filip_loss"}
    assert losses["filip_loss"].item() == pytest.approx(0.5 * loop_loss(expected, 0.1), rel=1e-5)
    assert metrics["filip_ce"].item() == pytest.approx(loop_loss(expected, 0.1), rel=1e-5)


def test_padding_tokens_never_count(batch):
    text, image, mask = batch
    before = token_wise_similarity(text, image, mask)
    junk = text.clone()
    junk[~mask] = image[0, 0] * 100  # a padding token identical to a patch would win every max over tokens
    assert torch.allclose(token_wise_similarity(junk, image, mask), before)
    assert not torch.allclose(token_wise_similarity(junk, image, None), before)


def test_the_padding_tail_is_cut_without_changing_the_loss_or_its_gradient(batch):
    text, image, mask = batch
    padded_text = torch.cat([text, torch.randn(4, 9, 5, dtype=torch.float64)], 1).requires_grad_()
    padded_mask = torch.cat([mask, torch.zeros(4, 9, dtype=torch.bool)], 1)
    short_text = text.clone().requires_grad_()
    short_loss = FilipTerms()(short_text, image, mask)[0]["filip_loss"]
    padded_loss = FilipTerms()(padded_text, image, padded_mask)[0]["filip_loss"]
    assert padded_loss.item() == pytest.approx(short_loss.item(), rel=1e-12)
    short_loss.backward()
    padded_loss.backward()
    assert torch.allclose(padded_text.grad[:, :7], short_text.grad) and torch.all(padded_text.grad[:, 7:] == 0)


def test_a_caption_without_tokens_scores_zero_and_stays_finite(batch):
    text, image, mask = batch
    mask[1] = False
    losses, _ = FilipTerms()(text, image, mask)
    assert torch.all(token_wise_similarity(text, image, mask)[1] == 0) and torch.isfinite(losses["filip_loss"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        FilipTerms(weight=-1)
    with pytest.raises(ValueError):
        FilipTerms(temperature=0)


# --- the plugin: --loss filip ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def params():
    plugin.activate(strict=True)
    import open_clip_train.params

    return open_clip_train.params


@pytest.mark.parametrize("argv, loss", [(["--filip-weight", "1"], "clip"),
                                        (["--loss", "tier", "--filip-temperature", "0.1"], "tier")])
def test_filip_flags_without_loss_filip_stop_the_run(params, capsys, argv, loss):
    flag = argv[-2]
    assert refused(params, argv, capsys) == (
        f"tier-openclip: {flag} acts only with --loss filip, and this run has --loss {loss}, which would "
        f"ignore it: add --loss filip, or drop {flag}\n")


@pytest.mark.parametrize("argv, message", [
    (["--filip-weight", "-1"], "--filip-weight -1.0: must be a finite number >= 0"),
    (["--filip-temperature", "0"], "--filip-temperature 0.0: must be a finite number > 0"),
    (["--filip-weight", "nan"], "--filip-weight nan: must be a finite number >= 0"),
])
def test_filip_numbers_out_of_range_stop_the_run(params, capsys, argv, message):
    assert refused(params, ["--loss", "filip", *argv], capsys) == f"tier-openclip: {message}\n"


def test_loss_filip_builds_clips_loss_plus_the_filip_term(params, batch):
    args = params.parse_args(["--model", "TIER-tiny", "--loss", "filip", "--filip-weight", "0.5",
                              "--filip-temperature", "0.1"])
    args.rank, args.world_size, args.device = 0, 1, "cpu"  # set by open_clip_train.main after parsing
    loss = plugin.build_loss(args)
    assert type(loss) is ContrastiveTokenLoss and isinstance(loss.extra_terms, FilipTerms)
    text, image, mask = batch
    gen = torch.Generator().manual_seed(1)
    image_features = F.normalize(torch.randn(4, 5, generator=gen), dim=-1)
    text_features = F.normalize(torch.randn(4, 5, generator=gen), dim=-1)
    out = loss(image_features, text_features, torch.tensor(10.0), image_tokens=image.float(),
               text_tokens=text.float(), text_mask=mask, output_dict=True)
    assert out.keys() == {"contrastive_loss", "filip_loss"}
    assert out["filip_loss"].item() == pytest.approx(0.5 * loop_loss(loop_similarity(text, image, mask), 0.1), rel=1e-4)


# --- the demo: --pretrain-loss ---------------------------------------------------------------------


def test_the_demos_filip_pretraining_command_carries_the_filip_loss(params):
    data = {"train_csv": "train.csv", "num_train": 64}
    options = DemoOptions(out=Path("out"), pretrain_loss="filip")
    name = run_name("pretrain", 0, options.pretrain_loss)
    command = training_command(data, 32, options.stage("pretrain"), 0, Path("logs"), name,
                               pretrain_flags(options.pretrain_loss))
    assert command[-6:] == ["--loss", "filip", "--filip-weight", "1", "--filip-temperature", "0.07"]
    parsed = params.parse_args(command[3:])  # the plugin accepts it as the training process would
    assert (parsed.loss, parsed.filip_weight, parsed.filip_temperature, parsed.name) == (
        "filip", 1.0, 0.07, "pretrain-filip-start0")
    assert pretrain_flags("clip") == ["--loss", "clip"]
    with pytest.raises(UsageError):
        pretrain_flags("tier")


def test_run_names_change_with_the_pretraining_loss_and_clips_stay_as_before():
    assert run_name("pretrain", 1, "clip") == "pretrain-start1"  # existing demo folders stay reusable
    assert run_name("clip", 1, "clip") == "clip-start1"
    assert run_name("pretrain", 1, "filip") == "pretrain-filip-start1"
    assert run_name("clip", 1, "filip") == "clip-filip-start1"  # a fine-tune from a FILIP start is its own run
