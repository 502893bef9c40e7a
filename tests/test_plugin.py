"""The plugin's wiring into open_clip_train: flags, loss dispatch, start-up hook, version checks."""

from __future__ import annotations

import argparse
import ast
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tier_openclip import openclip_adapter as adapter
from tier_openclip.training import plugin


@pytest.fixture(scope="module")
def params():
    plugin.activate(strict=True)
    import open_clip_train.params

    return open_clip_train.params


def test_activation_wraps_each_function_once(params):
    import open_clip
    import open_clip_train.train

    assert plugin.activate() is True  # idempotent
    for function in (params.parse_args, open_clip.create_loss, open_clip_train.train.train_one_epoch):
        original = function.__tier_openclip_wrapped__
        assert not hasattr(original, "__tier_openclip_wrapped__")


def test_plugin_flags_parse_next_to_open_clips(params):
    args = params.parse_args([
        "--model", "TIER-tiny", "--loss", "tier", "--tier-lambda-text", "0.5", "--tier-token-mask", "all",
        "--loss-dist-impl", "gather", "--siglip", "--lr", "1e-4",
    ])
    assert (args.loss, args.tier_lambda_text, args.tier_lambda_image, args.tier_token_mask) == ("tier", 0.5, 0.1, "all")
    assert (args.loss_dist_impl, args.siglip, args.lr, args.model) == ("gather", True, 1e-4, "TIER-tiny")
    assert (args.lu_align_weight, args.lu_uniform_weight) == (0.0, 0.0)
    lu = params.parse_args(["--loss=local-uniformity", "--lu-uniform-weight", "0.5"])
    assert (lu.loss, lu.lu_align_weight, lu.lu_uniform_weight) == ("local-uniformity", 1.0, 0.5)
    stock = params.parse_args([])
    assert stock.loss == "clip"


def test_bad_plugin_flag_values_are_rejected_by_argparse(params, capsys):
    with pytest.raises(SystemExit):
        params.parse_args(["--loss", "entropy"])
    assert "invalid choice: 'entropy'" in capsys.readouterr().err


def test_help_lists_the_plugin_flags(params, capsys):
    with pytest.raises(SystemExit):
        params.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--tier-lambda-text" in out and "--train-data" in out


def _args(params, *extra):
    args = params.parse_args(["--model", "TIER-tiny", *extra])
    args.distill, args.rank, args.world_size, args.horovod, args.device = False, 0, 1, False, "cpu"
    return args


def test_create_loss_dispatch(params):
    import open_clip
    from open_clip.loss import ClipLoss, SigLipLoss

    from tier_openclip.local_uniformity import LocalUniformityTerms
    from tier_openclip.loss import ContrastiveTokenLoss, TierLoss

    assert type(open_clip.create_loss(_args(params))) is ClipLoss
    assert type(open_clip.create_loss(_args(params, "--loss", "clip", "--siglip"))) is SigLipLoss
    tier = open_clip.create_loss(_args(params, "--loss", "tier", "--tier-lambda-image", "0.3"))
    assert isinstance(tier, TierLoss) and isinstance(tier.contrastive, ClipLoss)
    assert (tier.lambda_text, tier.lambda_image, tier.with_tier, tier.extra_terms) == (0.1, 0.3, True, None)
    assert isinstance(open_clip.create_loss(_args(params, "--loss", "tier", "--siglip")).contrastive, SigLipLoss)
    lu = open_clip.create_loss(_args(params, "--loss", "local-uniformity"))
    assert type(lu) is ContrastiveTokenLoss and not lu.with_tier and isinstance(lu.extra_terms, LocalUniformityTerms)
    both = open_clip.create_loss(_args(params, "--loss", "tier", "--lu-uniform-weight", "0.2"))
    assert type(both) is TierLoss and both.extra_terms.uniform_weight == 0.2 and both.extra_terms.align_weight == 0


def test_unsupported_combinations_say_what_to_do(params, monkeypatch):
    import open_clip

    coca = _args(params, "--loss", "tier")
    coca.model = "coca_ViT-B-32"
    with pytest.raises(SystemExit, match="does not support CoCa models; use --loss clip"):
        open_clip.create_loss(coca)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit, match="--tier-impl triton: .*CUDA"):
        open_clip.create_loss(_args(params, "--loss", "tier", "--tier-impl", "triton"))


def test_open_clip_4_is_refused_with_one_clear_message(monkeypatch):
    import open_clip

    monkeypatch.setattr(open_clip, "__version__", "4.0.0")
    monkeypatch.delattr(open_clip, "create_loss")
    monkeypatch.setattr(open_clip, "create_task", object(), raising=False)
    with pytest.raises(adapter.OpenClipIncompatible, match="replaces create_loss with create_task"):
        adapter.check_open_clip()
    monkeypatch.undo()
    monkeypatch.setattr(open_clip, "__version__", "2.24.0")
    with pytest.raises(adapter.OpenClipIncompatible, match=r"found open_clip 2\.24\.0, but tier-openclip supports open_clip 3\.x"):
        adapter.check_open_clip()


def test_refusal_passes_stock_runs_and_stops_plugin_runs():
    calls = []
    fake_params = types.SimpleNamespace(parse_args=lambda argv: calls.append(argv) or argparse.Namespace())
    plugin._refuse_plugin_flags(fake_params, adapter.OpenClipIncompatible("open_clip 4.0 is not supported"))
    fake_params.parse_args(["--model", "RN50", "--loss-dist-impl", "gather"])
    assert calls == [["--model", "RN50", "--loss-dist-impl", "gather"]]
    with pytest.raises(SystemExit, match="tier-openclip: open_clip 4.0 is not supported"):
        fake_params.parse_args(["--loss=tier"])


def run_python(code: str, tmp_path, **env):
    import os

    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, **env}, timeout=300,
    )


def test_startup_hook_is_installed_and_lazy(tmp_path):
    result = run_python(
        "import sys\n"
        "assert any(type(f).__name__ == '_PluginFinder' for f in sys.meta_path), 'start-up hook missing'\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'open_clip_train', 'tier_openclip'))\n"
        "print(heavy)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_startup_hook_activates_on_open_clip_train_import(tmp_path):
    result = run_python(
        "import open_clip, open_clip_train.params as p\n"
        "print('TIER-tiny' in open_clip.list_models(), hasattr(p.parse_args, '__tier_openclip_wrapped__'))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
    disabled = run_python(
        "import open_clip, open_clip_train.params as p\n"
        "print('TIER-tiny' in open_clip.list_models(), hasattr(p.parse_args, '__tier_openclip_wrapped__'))\n",
        tmp_path, TIER_OPENCLIP_DISABLE="1",
    )
    assert disabled.stdout.split() == ["False", "False"]


def test_main_on_an_unrecognised_open_clip_stops_with_one_message(tmp_path):
    result = run_python(
        "import open_clip\n"
        "open_clip.__version__ = '4.1.0'\n"
        "import runpy, sys\n"
        "sys.argv = ['main', '--loss', 'tier', '--model', 'RN50']\n"
        "runpy.run_module('open_clip_train.main', run_name='__main__')\n",
        tmp_path,
    )
    assert result.returncode != 0
    assert "tier-openclip: found open_clip 4.1.0, but tier-openclip supports open_clip 3.x" in result.stderr
    assert "Traceback" not in result.stderr


def test_diagnostics_logger_measures_the_loss_call_every_n_steps_and_logs_them(tmp_path, caplog):
    import json
    import logging

    import torch
    import torch.nn.functional as F

    from tier_openclip.loss import TierLoss

    weight = torch.nn.Parameter(torch.randn(5, 4, generator=torch.Generator().manual_seed(0)))
    x_text, x_image = torch.randn(3, 4, 5), torch.randn(3, 6, 5)
    args = argparse.Namespace(accum_freq=2, log_every_n_steps=100, tier_diagnostics_every=2, rank=0,
                              save_logs=True, checkpoint_path=str(tmp_path), wandb=False)
    loss = TierLoss(impl="torch")
    loss.diagnostics_hook = plugin.TierDiagnosticsLogger(args, None, epoch=1, num_batches=8, params=[weight])
    caplog.set_level(logging.INFO)
    for _ in range(8):  # 8 micro-batches = 4 optimizer steps of epoch 1: global steps 4..7
        text, image = x_text @ weight, x_image @ weight
        loss(F.normalize(image.mean(1), dim=-1), F.normalize(text.mean(1), dim=-1), torch.tensor(10.0),
             image_tokens=F.normalize(image, dim=-1), text_tokens=F.normalize(text, dim=-1))
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [4, 6, 7]  # every 2nd step, and the epoch's last
    assert lines[0]["diag_tier_grad_ratio"] > 0 and lines[0]["diag_max_entropy_token_patch"] == pytest.approx(1.791759, abs=1e-6)
    assert "tier-openclip diagnostics step 6: diag_entropy_token_patch: " in caplog.text
    assert weight.grad is None


def test_auto_lambda_is_measured_once_or_read_back_on_resume(params, tmp_path):
    import json

    import open_clip

    from tier_openclip.training.auto_lambda import RECORD, AutoLambda

    args = _args(params, "--loss", "tier", "--tier-lambda-image", "auto", "--tier-lambda-text", "0.3")
    args.checkpoint_path, args.resume = str(tmp_path), None
    fresh = open_clip.create_loss(args)
    assert isinstance(fresh.lambda_calibration, AutoLambda) and fresh.lambda_calibration.directions == ("image",)
    assert (fresh.lambda_text, fresh.lambda_image) == (0.3, 0.0)
    (tmp_path / RECORD).write_text(json.dumps({"lambda": 7.5}))
    resumed = open_clip.create_loss(args)
    assert resumed.lambda_calibration is None and (resumed.lambda_text, resumed.lambda_image) == (0.3, 7.5)


def test_a_diagnostic_that_cannot_be_measured_is_skipped_with_a_warning(tmp_path, caplog):
    import torch
    import torch.nn.functional as F

    from tier_openclip.loss import TierLoss

    unrelated = torch.nn.Parameter(torch.ones(3))  # no term reaches it: the ratio is undefined
    args = argparse.Namespace(accum_freq=1, log_every_n_steps=1, tier_diagnostics_every=1, rank=0,
                              save_logs=True, checkpoint_path=str(tmp_path), wandb=False)
    loss = TierLoss(impl="torch")
    loss.diagnostics_hook = plugin.TierDiagnosticsLogger(args, None, epoch=0, num_batches=1, params=[unrelated])
    tokens = F.normalize(torch.randn(2, 3, 4, requires_grad=True), dim=-1)
    features = F.normalize(torch.randn(2, 4, requires_grad=True), dim=-1)
    total = loss(features, features, torch.tensor(10.0), image_tokens=tokens, text_tokens=tokens)
    assert torch.isfinite(total)
    assert "tier-openclip diagnostics step 0 skipped: the contrastive loss has a zero gradient" in caplog.text
    assert not (tmp_path / "results.jsonl").exists()


def test_a_warmup_at_least_the_runs_steps_is_warned_once(monkeypatch, caplog):
    from types import SimpleNamespace

    from tier_openclip.training import plugin

    data = {"train": SimpleNamespace(dataloader=SimpleNamespace(num_batches=30))}
    args = argparse.Namespace(warmup=10000, accum_freq=1, epochs=4, lr=5e-4, rank=0)
    monkeypatch.setitem(plugin._state, "warmup_checked", False)
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        plugin._warn_long_warmup(data, args)
        plugin._warn_long_warmup(data, args)  # every epoch calls it: one line per run
    lines = [r.getMessage() for r in caplog.records if "--warmup" in r.getMessage()]
    assert len(lines) == 1 and "--warmup 10000 is at least this run's 120 optimizer steps" in lines[0]
    assert "--warmup 12" in lines[0] and "\n" not in lines[0]
    caplog.clear()
    monkeypatch.setitem(plugin._state, "warmup_checked", False)
    with caplog.at_level(logging.WARNING, logger="tier_openclip"):
        plugin._warn_long_warmup(data, argparse.Namespace(warmup=100, accum_freq=1, epochs=4, lr=5e-4, rank=0))
    assert "--warmup" not in caplog.text


def test_one_rule_recognises_the_plugin_flags_and_the_start_up_hook_copies_it():
    import inspect
    import re

    import open_clip_train.params as params

    from helpers import startup_hook_source
    from tier_openclip.training import plugin_args

    # The hook's function, read from its file: importing the module would install a second finder.
    source = startup_hook_source()
    tree = ast.parse(source.read_text(encoding="utf-8"))
    namespace: dict = {}
    exec(compile(ast.Module([n for n in tree.body if getattr(n, "name", "") == "_plugin_flag"], []), str(source), "exec"),
         namespace)
    startup_rule = namespace["_plugin_flag"]
    ours = plugin_args.option_strings(plugin.build_plugin_parser())
    original = getattr(params.parse_args, "__tier_openclip_wrapped__", params.parse_args)
    theirs = set(re.findall(r"[\"'](--[a-z0-9-]+)[\"']", inspect.getsource(inspect.unwrap(original))))
    assert "--loss-dist-impl" in theirs and len(theirs) > 50
    abbreviations = {flag[:n] for flag in ours for n in range(3, len(flag))}
    for name in [*ours, *abbreviations, *theirs, "--tier-unknown=1", "--lu-x"]:
        assert plugin_args.is_plugin_flag(name) == startup_rule(name), name  # the hook's import-free copy
    assert all(plugin_args.is_plugin_flag(flag) for flag in ours)  # a new flag needs a name the rule knows
    assert not [flag for flag in theirs if plugin_args.is_plugin_flag(flag)]  # open_clip's own flags pass
    assert plugin_args.plugin_flags_in(["--model", "RN50", "--los=tier", "--", "--tier-scale"]) == ["--los"]


def test_check_tier_scale_is_the_one_scale_check():
    from tier_openclip.errors import UsageError
    from tier_openclip.training.plugin_args import MAX_TIER_SCALE, check_tier_scale

    for fine in ("logit", 1.0, MAX_TIER_SCALE, None):
        check_tier_scale(fine)
    for wrong in (0.0, -1.0, float("nan"), float("inf"), True, "two"):
        with pytest.raises(UsageError, match="must be a finite number > 0"):
            check_tier_scale(wrong)
    with pytest.raises(UsageError, match="is above 100"):
        check_tier_scale(100.5)
