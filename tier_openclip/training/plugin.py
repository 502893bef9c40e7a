"""Adds ``--loss tier`` (and ``--loss local-uniformity``) to open_clip's own training loop.

Wrap, don't fork: before ``open_clip_train/main.py`` runs, ``activate`` replaces three functions
it imports by name — ``parse_args`` (our flags), ``open_clip.create_loss`` (our losses) and
``train_one_epoch`` (token outputs on the model, entropy logging, zero-shot chest X-ray eval) —
each delegating to the original. With ``--loss clip`` (the default) every wrapper is a
pass-through, so a run is stock open_clip, but for two things every run gets: a --pretrained or
--resume file that is not a checkpoint of --model stops it in one line (checkpoint_checks.py), and each
epoch's loss settings are recorded for the model card (loss_history.py). The plugin's flags are checked before any training
(tier_openclip/training/plugin_args.py): abbreviations, flags the chosen loss ignores, numbers, folders.

``activate`` is called by the start-up hook (tier_openclip/_startup.py) when ``open_clip_train``
is imported, or explicitly by ``python -m tier_openclip.train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import math
from typing import Any, Callable

from tier_openclip import openclip_adapter as adapter
from tier_openclip.entropy import IMPLS
from tier_openclip.errors import CommandError, TierOpenclipError, UsageError, error_line, print_error
from tier_openclip.local_uniformity import TEXT_UNITS
from tier_openclip.loss import TOKEN_MASKS, check_scale
from tier_openclip.models import hf_towers
from tier_openclip.models import register_model_configs
from tier_openclip.training import plugin_args

LOSSES = ("clip", "tier", "local-uniformity", "filip")
logger = logging.getLogger("tier_openclip")
_state: dict[str, Any] = {"active": False, "error": None}


def build_plugin_parser() -> argparse.ArgumentParser:
    """The flags tier-openclip adds to open_clip_train.main (shown by --help)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("tier-openclip")
    group.add_argument("--loss", choices=LOSSES, default="clip",
                       help="Training loss: open_clip's own (clip, or SigLIP with --siglip), "
                            "TIER (tier), local alignment + uniformity (local-uniformity), or CLIP + FILIP's "
                            "token-wise contrastive term (filip). Default: clip.")
    group.add_argument("--tier-lambda-text", type=_tier_lambda, default=0.1, metavar="{L,auto}",
                       help="Weight of the mean token→patch entropy (default: 0.1), or 'auto' (see --tier-target-ratio).")
    group.add_argument("--tier-lambda-image", type=_tier_lambda, default=0.1, metavar="{L,auto}",
                       help="Weight of the mean patch→token entropy (default: 0.1), or 'auto' (see --tier-target-ratio).")
    group.add_argument("--tier-target-ratio", type=float, default=0.1, metavar="R",
                       help="With --tier-lambda-* auto: the λ (one for the auto terms) that makes their gradient R "
                            "times the contrastive loss's on the trainable parameters, measured on the first batch "
                            "and fixed for the run (kept on --resume). Default: 0.1.")
    group.add_argument("--tier-scale", type=_tier_scale, default=1.0, metavar="{S,logit}",
                       help="Scale of the cosine similarities inside the entropies: a positive number, or "
                            "'logit' for the model's own learned logit scale (detached: TIER does not train "
                            "it). Default: 1, the paper's raw cosine; any other value departs from the paper.")
    group.add_argument("--tier-impl", choices=IMPLS, default="auto",
                       help="Entropy implementation: auto (Triton on CUDA, else torch), torch or triton.")
    group.add_argument("--tier-token-mask", choices=TOKEN_MASKS, default="valid",
                       help="valid: the tower's valid tokens (no padding, no constant start token of causal "
                            "text towers); all: as the authors' code, every position up to the batch's "
                            "longest caption, start/end tokens and shorter captions' padding included.")
    group.add_argument("--lu-align-weight", type=float, default=None,
                       help="Weight of the local alignment term (default: 1 with --loss local-uniformity, "
                            "0 with --loss tier).")
    group.add_argument("--lu-uniform-weight", type=float, default=None,
                       help="Weight of the within-sample uniformity prior (default: 1 with --loss "
                            "local-uniformity, 0 with --loss tier).")
    group.add_argument("--lu-temperature", type=float, default=0.1,
                       help="Softmax temperature of the local alignment's cross-modal attention (default: 0.1).")
    group.add_argument("--lu-t", type=float, default=2.0,
                       help="t of the Gaussian-potential uniformity, log mean exp(-t·|zi-zj|²) (default: 2).")
    group.add_argument("--lu-text-units", choices=TEXT_UNITS, default="sentences",
                       help="Local text embeddings of the local terms: sentences (each report sentence's tokens "
                            "pooled into one, found from the tokenizer's '.' tokens) or tokens. TIER's own "
                            "entropies always use tokens. Default: sentences.")
    group.add_argument("--filip-weight", type=float, default=1.0,
                       help="--loss filip: weight of the FILIP token-wise contrastive term beside CLIP's (default: 1).")
    group.add_argument("--filip-temperature", type=float, default=0.07,
                       help="--loss filip: fixed temperature of the token-wise logits (default: 0.07, CLIP's "
                            "initial temperature; tier_openclip/filip.py says why fixed).")
    group.add_argument("--tier-diagnostics-every", type=int, default=0, metavar="N",
                       help="Every N optimizer steps, log whether TIER acts: its entropies, top-1/top-k mass of "
                            "the token->patch maps at the training scale, and the norm of TIER's gradient over "
                            "the contrastive loss's on the trainable parameters (3 extra backward passes on "
                            "those steps, no extra forward). 0 (default): off.")
    group.add_argument("--tier-zeroshot-chexpert", metavar="DIR", default=None,
                       help="CheXpert set from `tier-openclip prep chexpert`: zero-shot AUC every --zeroshot-frequency epochs.")
    group.add_argument("--tier-zeroshot-padchest", metavar="DIR", default=None,
                       help="PadChest set from `tier-openclip prep padchest`: zero-shot AUC every --zeroshot-frequency epochs.")
    group.add_argument("--tier-zeroshot-prompts", metavar="FILE|authors", default=None,
                       help="Prompts of the zero-shot AUCs during training: a prompt file (as `eval zeroshot "
                            "--prompts`) or 'authors' (the TIER authors' protocol, which their λ search used). "
                            "Default: CheXzero's '{label}' vs 'no {label}'.")
    group.add_argument("--tier-grounding", metavar="DIR", default=None,
                       help="Grounding set (`tier-openclip prep ms-cxr`, or the demo's phantom test set): CNR, "
                            "pointing game and mIoU every --zeroshot-frequency epochs.")
    return parser


def _tier_lambda(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)  # a range error (negative, nan) is plugin_args's to report
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _tier_scale(text: str) -> float | str:
    try:
        return check_scale(text if text == "logit" else float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'logit', got {text!r}") from None


def _uses_plugin_flags(argv: list[str]) -> bool:
    return bool(plugin_args.plugin_flags_in(argv))


def _stop(error: TierOpenclipError) -> None:
    """One line on stderr before any training; exit status 2 for a usage error (as argparse), 1 for
    a checkpoint that cannot be used."""
    print_error(error)
    raise SystemExit(error.exit_code)


def _check_start_checkpoints(args: argparse.Namespace) -> None:
    from tier_openclip.training.checkpoint_checks import check_start_checkpoints

    check_start_checkpoints(args)


def wrap_parse_args(original: Callable[[list[str]], argparse.Namespace]) -> Callable:
    @functools.wraps(original)
    def parse_args(args: list[str]) -> argparse.Namespace:
        args = list(args)
        ours = build_plugin_parser()
        flags = plugin_args.option_strings(ours)
        if "-h" in args or "--help" in args:
            ours.print_help()
            print()
        try:
            plugin_args.check_abbreviations(args, flags)  # before open_clip's parser can misread them
        except UsageError as error:
            _stop(error)
        ours_parsed, rest = ours.parse_known_args(args)
        parsed = original(rest)
        for name, value in vars(ours_parsed).items():
            setattr(parsed, name, value)
        _resolve_local_uniformity_defaults(parsed)
        try:
            plugin_args.check_plugin_args(parsed, args, flags)
            _check_start_checkpoints(parsed)
        except TierOpenclipError as error:
            _stop(error)
        try:  # offline and a hub tower not cached: say which to pre-download before open_clip retries
            hf_towers.check_cached(parsed.model)
        except CommandError as error:
            _stop(error)
        return parsed

    parse_args.__tier_openclip_wrapped__ = original  # type: ignore[attr-defined]
    return parse_args


def _resolve_local_uniformity_defaults(args: argparse.Namespace) -> None:
    on_by_default = 1.0 if args.loss == "local-uniformity" else 0.0
    for name in ("lu_align_weight", "lu_uniform_weight"):
        if getattr(args, name) is None:
            setattr(args, name, on_by_default)


def build_loss(args: argparse.Namespace):
    """The loss ``--loss tier`` (TierLoss) or ``--loss local-uniformity`` (ContrastiveTokenLoss with
    local alignment and uniformity terms) and their flags describe."""
    import torch

    from tier_openclip.entropy import resolve_impl
    from tier_openclip.local_uniformity import LocalUniformityTerms, collapse_is_stable
    from tier_openclip.loss import ContrastiveTokenLoss, TierLoss
    from tier_openclip.training import auto_lambda

    unsupported = adapter.is_coca_or_distill(args)
    if unsupported:
        raise SystemExit(error_line(f"--loss {args.loss} does not support {unsupported}; use --loss clip."))
    if args.tier_impl != "auto":
        try:
            resolve_impl(args.tier_impl, torch.empty(0, device=args.device))
        except RuntimeError as exc:
            raise SystemExit(error_line(f"--tier-impl {args.tier_impl}: {exc}")) from None
    extra = None
    if args.lu_align_weight or args.lu_uniform_weight:
        if collapse_is_stable(args.lu_align_weight, args.lu_uniform_weight, args.lu_t):
            logger.warning(
                "tier-openclip: --lu-uniform-weight %g × --lu-t %g is below half of --lu-align-weight %g: one vector "
                "for every patch and text unit of a pair is then a stable solution of the local terms "
                "(docs/local-uniformity.md). Watch local_cos_image/local_cos_text, or give --lu-uniform-weight at least %g.",
                args.lu_uniform_weight, args.lu_t, args.lu_align_weight, args.lu_align_weight / (2 * args.lu_t))
        extra = LocalUniformityTerms(
            align_weight=args.lu_align_weight,
            uniform_weight=args.lu_uniform_weight,
            temperature=args.lu_temperature,
            t=args.lu_t,
            text_units=args.lu_text_units,
            sentence_vocab=_sentence_vocab(args) if args.lu_text_units == "sentences" else None,
        )
    if args.loss == "filip":
        from tier_openclip.filip import FilipTerms

        extra = FilipTerms(weight=args.filip_weight, temperature=args.filip_temperature)
    loss_class = TierLoss if args.loss == "tier" else ContrastiveTokenLoss
    loss = loss_class(
        lambda_text=0.0 if args.tier_lambda_text == "auto" else args.tier_lambda_text,
        lambda_image=0.0 if args.tier_lambda_image == "auto" else args.tier_lambda_image,
        scale=args.tier_scale,
        impl=args.tier_impl,
        token_mask=args.tier_token_mask,
        extra_terms=extra,
        siglip=args.siglip,
        **dataclasses.asdict(adapter.contrastive_args_from(args)),
    )
    if args.loss == "tier" and auto_lambda.auto_directions(args):
        directions = auto_lambda.auto_directions(args)
        recorded = auto_lambda.recorded_lambda(args)
        if recorded is None:
            loss.lambda_calibration = auto_lambda.AutoLambda(args, directions, args.tier_target_ratio)
        else:
            auto_lambda.set_lambda(loss, directions, recorded)
            logger.info("tier-openclip: --tier-lambda-* auto: λ = %.6g, as chosen at the start of the resumed run", recorded)
    return loss


def _sentence_vocab(args: argparse.Namespace):
    """The sentence-boundary ids of the run's tokenizer (the one open_clip_train.main tokenizes with)."""
    from tier_openclip.sentences import sentence_vocab

    tokenizer = adapter.symbol("get_tokenizer")(args.model, cache_dir=getattr(args, "cache_dir", None))
    try:
        return sentence_vocab(tokenizer)
    except TypeError as exc:
        raise SystemExit(error_line(f"--lu-text-units sentences: {exc}; or use --lu-text-units tokens")) from None


def wrap_create_loss(original: Callable) -> Callable:
    @functools.wraps(original)
    def create_loss(args: argparse.Namespace):
        if getattr(args, "loss", "clip") == "clip":
            return original(args)
        return build_loss(args)

    create_loss.__tier_openclip_wrapped__ = original  # type: ignore[attr-defined]
    return create_loss


class TrainMetricsLogger:
    """Logs the raw entropies (and other token metrics) every --log-every-n-steps, like open_clip."""

    def __init__(self, args: argparse.Namespace, tb_writer: Any, epoch: int, num_batches: int,
                 every: int | None = None):
        self.args = args
        self.tb_writer = tb_writer
        self.steps_per_epoch = num_batches // args.accum_freq
        self.first_step = self.steps_per_epoch * epoch
        self.every = every or args.log_every_n_steps
        self.calls = 0

    def _due_step(self) -> int | None:
        """Counts one loss call; the global step if it ends an optimizer step to log, else None."""
        # With --accum-freq k the loss runs k times per optimizer step (once per micro-batch).
        self.calls += 1
        if self.calls % self.args.accum_freq:
            return None
        step_in_epoch = self.calls // self.args.accum_freq - 1
        last = step_in_epoch + 1 == self.steps_per_epoch
        if step_in_epoch % self.every and not last:
            return None
        return self.first_step + step_in_epoch

    def __call__(self, metrics: dict) -> None:
        step = self._due_step()
        if step is not None and self.args.rank == 0:
            self._log({name: float(value) for name, value in metrics.items()}, step)

    def _log(self, values: dict[str, float], step: int, what: str = "step", fmt: str = ".4f") -> None:
        logging.info("tier-openclip %s %d: %s", what, step, " ".join(f"{k}: {v:{fmt}}" for k, v in values.items()))
        if self.tb_writer is not None:
            for name, value in values.items():
                self.tb_writer.add_scalar(f"train/{name}", value, step)
        if getattr(self.args, "wandb", False):
            import wandb

            wandb.log({f"train/{k}": v for k, v in values.items()}, step=step)


class TierDiagnosticsLogger(TrainMetricsLogger):
    """--tier-diagnostics-every N: is TIER acting? (tier_openclip.training.diagnostics). The loss's
    ``diagnostics_hook``: it measures the loss call's own tensors, so training needs no extra forward,
    and autograd.grad leaves every .grad alone, so the training step is unchanged. Logged with the
    token metrics (prefix diag_), and as a line {"step": ..., "diag_...": ...} in results.jsonl."""

    def __init__(self, args: argparse.Namespace, tb_writer: Any, epoch: int, num_batches: int, params: list,
                 scaler: Any = None):
        super().__init__(args, tb_writer, epoch, num_batches, every=args.tier_diagnostics_every)
        self.params = params
        self.scaler = scaler  # --precision amp's GradScaler: its scale keeps float16 gradients from underflowing

    def __call__(self, losses: dict, tier_inputs: dict) -> None:
        from tier_openclip.evaluation.validation_log import append_results
        from tier_openclip.training.diagnostics import gradient_ratio_of_terms, token_map_stats

        step = self._due_step()
        if step is None:
            return
        # Every rank computes: with --gather-with-grad the contrastive gradient crosses ranks.
        loss_scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
        try:
            ratio = gradient_ratio_of_terms(losses, self.params, loss_scale)
            if loss_scale != 1.0 and not all(math.isfinite(value) for value in ratio.values()):
                ratio = gradient_ratio_of_terms(losses, self.params)  # the scale overflowed (the scaler skips this step)
        except ValueError as exc:  # a diagnostic must never stop a training run
            logging.warning("tier-openclip diagnostics step %d skipped: %s", step, exc)
            return
        values = {**token_map_stats(**tier_inputs), **ratio}
        if self.args.rank == 0:
            values = {f"diag_{name}": value for name, value in values.items()}
            self._log(values, step, what="diagnostics step", fmt=".5g")
            append_results({"step": step, **values}, self.args)


def wrap_train_one_epoch(original: Callable) -> Callable:
    @functools.wraps(original)
    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None):
        from tier_openclip.features import enable_token_outputs
        from tier_openclip.loss import ContrastiveTokenLoss

        _record_loss_settings(args, epoch)
        _warn_long_warmup(data, args)
        adapter.quiet_torch_internals()  # main.py's setup_logging has run by now
        if isinstance(loss, ContrastiveTokenLoss):
            enable_token_outputs(model)
            num_batches = adapter.train_batches(data)
            loss.metrics_hook = TrainMetricsLogger(args, tb_writer, epoch, num_batches)
            params = [p for p in model.parameters() if p.requires_grad]
            if loss.lambda_calibration is not None:
                loss.lambda_calibration.params = params
            if getattr(args, "tier_diagnostics_every", 0) and loss.with_tier:
                loss.diagnostics_hook = TierDiagnosticsLogger(args, tb_writer, epoch, num_batches, params, scaler)
        result = original(model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=tb_writer)
        if getattr(args, "tier_zeroshot_chexpert", None) or getattr(args, "tier_zeroshot_padchest", None):
            from tier_openclip.evaluation.zeroshot import zeroshot_during_training

            zeroshot_during_training(model, epoch + 1, args, tb_writer)
        if getattr(args, "tier_grounding", None):
            from tier_openclip.evaluation.grounding import grounding_during_training

            grounding_during_training(model, epoch + 1, args, tb_writer)  # logs its own failure, never raises
        return result

    train_one_epoch.__tier_openclip_wrapped__ = original  # type: ignore[attr-defined]
    return train_one_epoch


def _warn_long_warmup(data: Any, args: argparse.Namespace) -> None:
    """One warning (rank 0, once a process) when --warmup is at least the run's optimizer steps:
    open_clip's default 10000 makes a short run train on the first part of its warm-up ramp, at a
    learning rate near 0, and nothing else says so."""
    warmup = getattr(args, "warmup", None)
    if _state.get("warmup_checked") or not isinstance(warmup, int) or getattr(args, "rank", 0) != 0:
        return
    _state["warmup_checked"] = True
    try:
        steps = adapter.total_steps(data, args)
    except (AttributeError, KeyError, TypeError):  # no train loader the way open_clip builds one
        return
    if steps > 0 and warmup >= steps:
        top = getattr(args, "lr", 0.0) * steps / max(warmup, 1)
        logger.warning("tier-openclip: --warmup %d is at least this run's %d optimizer steps, so the learning rate "
                       "never leaves open_clip's warm-up ramp (it reaches %.3g of --lr %.3g); give a --warmup well "
                       "below %d, e.g. --warmup %d", warmup, steps, top, getattr(args, "lr", 0.0), steps,
                       max(steps // 10, 1))


def _record_loss_settings(args: argparse.Namespace, epoch: int) -> None:
    """Rank 0 notes this epoch's loss settings in logs/NAME/loss_history.json (and warns when a
    resume changed them); a failure to write is logged, never costs the epoch."""
    import os

    from tier_openclip.training import loss_history

    run_dir = os.path.join(getattr(args, "logs", None) or "", getattr(args, "name", None) or "")
    if getattr(args, "rank", 0) != 0 or not os.path.isdir(run_dir) or not getattr(args, "name", None):
        return
    try:
        loss_history.record_epoch(run_dir, epoch + 1, args)
    except OSError as exc:
        logger.warning("tier-openclip: could not record the loss settings of epoch %d: %s", epoch + 1, exc)


def _refuse_plugin_flags(params_module: Any, error: Exception) -> None:
    """open_clip unrecognised: stock runs go on, runs with our flags stop with one clear message."""
    original = params_module.parse_args

    @functools.wraps(original)
    def parse_args(args):
        if _uses_plugin_flags(list(args)):
            raise SystemExit(error_line(error))
        return original(args)

    params_module.parse_args = parse_args


def activate(strict: bool = False) -> bool:
    """Install the wrappers (idempotent). Returns False if open_clip is not one the plugin knows.

    strict: raise OpenClipIncompatible instead of leaving stock runs alone.
    """
    if _state["active"]:
        return True
    try:
        adapter.check_open_clip_train()
    except adapter.OpenClipIncompatible as exc:
        _state["error"] = exc
        if strict:
            raise
        try:
            params = importlib.import_module("open_clip_train.params")
        except ImportError:
            return False
        if hasattr(params, "parse_args"):
            _refuse_plugin_flags(params, exc)
        return False
    if _state["active"]:  # the import above ran the start-up hook, which activated the plugin
        return True
    adapter.replace("open_clip_train.params", "parse_args", wrap_parse_args)
    adapter.replace("open_clip", "create_loss", wrap_create_loss)
    adapter.replace("open_clip_train.train", "train_one_epoch", wrap_train_one_epoch)
    register_model_configs()
    _state["active"] = True
    return True


def is_active() -> bool:
    """Whether activate installed the wrappers: the start-up hook's guard on open_clip_train's
    parse_args (tier_openclip/_startup.py) lets plugin flags through only then."""
    return _state["active"]
