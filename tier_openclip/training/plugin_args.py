"""Start-up checks of the plugin's flags: a mistake stops the run before any training, with one message.

What each check prevents:
- abbreviations: open_clip's parser allows argparse's prefix matching, so ``--los tier`` would
  become its ``--loss-dist-impl tier`` and train plain CLIP with exit status 0;
- flags of a loss the run does not use (``--tier-lambda-text`` with ``--loss clip``), which would
  be ignored silently;
- numbers out of range: a negative or non-finite weight, ``--lu-temperature 0``, and a TIER scale
  so large that the entropies underflow to exactly 0, switching the regulariser off (see
  MAX_TIER_SCALE);
- evaluation folders that would only fail after the first epoch.

``check_abbreviations`` runs on the raw arguments, ``check_plugin_args`` on the parsed ones; both
raise UsageError, which ``plugin.wrap_parse_args`` prints as ``tier-openclip: ...`` (exit status 2).
"""

from __future__ import annotations

import argparse
import math
from typing import Iterable, Sequence

from tier_openclip.errors import UsageError

# The cosine similarities lie in [-1, 1], so scale s spreads each softmax's logits over at most
# [-s, s]. 100 is the cap open_clip puts on its own logit scale (CLIP's inverse temperature, and
# what --tier-scale logit can reach). Measured with the torch reference in float32 on random unit
# vectors (32 tokens x 196 patches; tests/test_security_training.py keeps the s=100 end of it):
# at s=100 the mean token->patch entropy is 1.54 nats for D=512 (cosine sd 0.044) and 0.32 for
# D=24 (sd 0.20, 3% of tokens already exactly 0); at s=1000 34-75% of the tokens' entropies are
# exactly 0, and at 1e6 all of them, so TIER's terms log 0 and the regulariser is silently off.
MAX_TIER_SCALE = 100.0

# dest -> (lowest value, whether the lowest value itself is allowed)
_RANGES = {
    "tier_lambda_text": (0.0, True),
    "tier_lambda_image": (0.0, True),
    "lu_align_weight": (0.0, True),
    "lu_uniform_weight": (0.0, True),
    "lu_temperature": (0.0, False),
    "lu_t": (0.0, False),
    "filip_weight": (0.0, True),
    "filip_temperature": (0.0, False),
    "tier_diagnostics_every": (0, True),
    "tier_target_ratio": (0.0, False),
}


def is_plugin_flag(arg: str) -> bool:
    """Whether a command-line argument is (an abbreviation of) a tier-openclip flag: --loss, --los,
    --tier-*, --lu-*, --filip-*. open_clip has no flag of these names; its --loss-dist-impl is left alone.

    The one rule: the plugin's parser (plugin.build_plugin_parser) only defines flags it accepts
    (tests/test_plugin.py), and the start-up hook's import-free copy (_startup._plugin_flag, which may
    import nothing of tier_openclip) is tested to agree with it."""
    name = arg.split("=", 1)[0]
    return name in ("--loss", "--los") or name.startswith(("--tier", "--lu-", "--filip"))


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [opt for action in parser._actions for opt in action.option_strings]


def _names(argv: Iterable[str]) -> list[str]:
    names = []
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("--"):
            names.append(arg.split("=", 1)[0])
    return names


def plugin_flags_in(argv: Iterable[str]) -> list[str]:
    """The names of the plugin's flags (is_plugin_flag) among the arguments, up to a ``--``."""
    return [name for name in _names(argv) if is_plugin_flag(name)]


def abbreviated(argv: Sequence[str], flags: Sequence[str]) -> list[tuple[str, list[str]]]:
    """(arg, the flags it abbreviates) for each argument that is a proper prefix of plugin flags."""
    found = []
    for name in _names(argv):
        matches = [flag for flag in flags if flag.startswith(name) and flag != name]
        if name not in flags and len(name) > 2 and matches:
            found.append((name, matches))
    return found


def check_abbreviations(argv: Sequence[str], flags: Sequence[str]) -> None:
    """UsageError for an abbreviated plugin flag: open_clip would read it as one of its own."""
    for name, matches in abbreviated(argv, flags):
        full = " or ".join(matches)
        why = ("open_clip's parser would read it as its --loss-dist-impl and train plain CLIP" if "--loss" in matches
               else "open_clip's parser would take it for one of its own flags or reject it")
        raise UsageError(f"{name} is short for {full}: write the flag in full ({why})")


def losses_of(flag: str) -> tuple[str, ...]:
    """The --loss values a plugin flag acts with."""
    if flag.startswith(("--tier-zeroshot-", "--tier-grounding")) or flag == "--loss":
        return ("clip", "tier", "local-uniformity", "filip")  # evaluation during training: any loss
    if flag.startswith("--filip-"):
        return ("filip",)
    if flag.startswith("--lu-") or flag == "--tier-token-mask":
        return ("tier", "local-uniformity")  # the local terms can be added to TIER
    return ("tier",)


def check_plugin_args(args: argparse.Namespace, argv: Sequence[str], flags: Sequence[str]) -> None:
    """UsageError for any plugin flag that the run would ignore, misread or fail on later."""
    given = [name for name in _names(argv) if name in flags]
    for flag in dict.fromkeys(given):
        allowed = losses_of(flag)
        if args.loss not in allowed:
            raise UsageError(f"{flag} acts only with --loss {' or '.join(allowed)}, and this run has --loss "
                             f"{args.loss}, which would ignore it: add --loss {allowed[0]}, or drop {flag}")
    for flag, weight in (("--lu-temperature", "lu_align_weight"), ("--lu-t", "lu_uniform_weight")):
        if flag in given and not getattr(args, weight):
            raise UsageError(f"{flag} sets a term whose weight --{weight.replace('_', '-')} is 0 in this run, so "
                             f"it would be ignored: give --{weight.replace('_', '-')} a positive weight, or drop {flag}")
    if "--tier-target-ratio" in given and "auto" not in (args.tier_lambda_text, args.tier_lambda_image):
        raise UsageError("--tier-target-ratio sets the λ of --tier-lambda-text/--tier-lambda-image auto, and neither "
                         "is auto in this run, so it would be ignored: give --tier-lambda-text auto (or -image), "
                         "or drop --tier-target-ratio")
    if "--lu-text-units" in given and not (args.lu_align_weight or args.lu_uniform_weight):
        raise UsageError("--lu-text-units chooses the text units of the local terms, whose weights --lu-align-weight "
                         "and --lu-uniform-weight are both 0 in this run, so it would be ignored: give one a "
                         "positive weight, or drop --lu-text-units")
    _check_numbers(args)
    _check_folders(args)


def _check_numbers(args: argparse.Namespace) -> None:
    for dest, (low, inclusive) in _RANGES.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, str):  # --tier-scale logit
            continue
        flag = "--" + dest.replace("_", "-")
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
            raise UsageError(f"{flag} {value}: must be a finite number {'>=' if inclusive else '>'} {low:g}")
    check_tier_scale(getattr(args, "tier_scale", None))


def check_tier_scale(scale: float | str | None) -> None:
    """UsageError for a --tier-scale the loss refuses (not 'logit' or a positive finite number:
    loss.check_scale, the one definition) or above MAX_TIER_SCALE: the one check training and the
    demo (tier_openclip/demo/design.py) share, so the demo refuses what training would."""
    if scale is None:
        return
    from tier_openclip.loss import check_scale  # torch: only once a run's flags are checked

    try:
        check_scale(scale)
    except ValueError:
        raise UsageError(f"--tier-scale {scale}: must be a finite number > 0, or 'logit'") from None
    if isinstance(scale, (int, float)) and scale > MAX_TIER_SCALE:
        raise UsageError(f"--tier-scale {scale:g} is above {MAX_TIER_SCALE:g}: with cosine similarities in [-1, 1] "
                         "the softmaxes saturate and the entropies underflow to exactly 0, which switches TIER off. "
                         f"Use at most {MAX_TIER_SCALE:g} (open_clip's cap on its own logit scale), or 'logit'")


def _check_folders(args: argparse.Namespace) -> None:
    from tier_openclip.evaluation.zeroshot import DATASETS, check_training_set

    folders = {f"--tier-zeroshot-{name}": getattr(args, f"tier_zeroshot_{name}", None) for name in DATASETS}
    folders["--tier-grounding"] = getattr(args, "tier_grounding", None)
    given = [flag for flag, folder in folders.items() if folder]
    if given and not getattr(args, "zeroshot_frequency", 0):
        raise UsageError(f"{given[0]} is never evaluated with --zeroshot-frequency 0: give a frequency in epochs "
                         f"(e.g. --zeroshot-frequency 1), or drop {given[0]}")
    prompts = getattr(args, "tier_zeroshot_prompts", None)
    if prompts and not any(getattr(args, f"tier_zeroshot_{name}", None) for name in DATASETS):
        raise UsageError("--tier-zeroshot-prompts acts only with --tier-zeroshot-chexpert or --tier-zeroshot-padchest: "
                         "add one, or drop it")
    problems = [check_training_set(name, getattr(args, f"tier_zeroshot_{name}", None), prompts) for name in DATASETS]
    if folders["--tier-grounding"]:
        from tier_openclip.evaluation.grounding import check_training_dir

        problems.append(check_training_dir(folders["--tier-grounding"]))
    problems = [problem for problem in problems if problem]
    if problems:
        raise UsageError("; ".join(problems))
