"""The report's sections that come before its numbers: data and environment, the rules (noise,
precondition, decision), the precondition per start, and each TIER arm's manipulation check and
reading. Shared by report.md and sweep.md (report.py)."""

from __future__ import annotations

from typing import Mapping, Sequence

from tier_openclip.demo.summary import DECISION_RULE, NOISE_RULE, PRECONDITION


def number(value, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def interval(entry: Mapping) -> str:
    """'[low, high]' of a paired difference's t-interval, or '–' (one start)."""
    ci = entry.get("ci")
    return "–" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def difference(entry: Mapping) -> str:
    return f"{entry['mean']:+.3f} ± {entry['sd']:.3f}"


def environment_lines(result: Mapping) -> list[str]:
    """## Data and environment: what two runs must share to give the same numbers."""
    env, data, fingerprint = result["environment"], result["data"], result["data_fingerprint"]
    package = env["package"]
    pins = ", ".join(f"{k}={v}" for k, v in env["pins"].items()) or "none (each library picks its path by CPU)"
    return [
        "## Data and environment", "",
        f"- data: phantom background `{data.get('background')}`; SHA-256 fingerprint `{fingerprint['sha256']}` "
        f"(training table `{fingerprint['train'][:16]}…`, test data `{fingerprint['test'][:16]}…`)",
        f"- code: tier-openclip {package['version']}" + (f", git commit `{package['commit']}`" if package["commit"] else "")
        + f"; torch {env['torch']}, numpy {env['numpy']}, open_clip {env['open_clip']}, Python {env['python']}",
        f"- machine: {env['cpu']}, {env['cores']} cores, vector extensions {' '.join(env['vector_extensions']) or '–'}; "
        f"torch threads {env['torch_threads']}",
        f"- code-path pins in the training and evaluation processes: {pins}; ATen's path there: {env['cpu_capability']}",
        "",
        "Two runs give the same numbers only with the same fingerprint and environment; "
        "`python benchmarks/demo_goals.py --compare A/demo.json B/demo.json` says whether two runs are comparable.",
        "",
    ]


def rules_lines() -> list[str]:
    """## Rules, written before the numbers."""
    return ["## Rules (fixed before the numbers)", "", f"- Noise: {NOISE_RULE}.", f"- Precondition: {PRECONDITION}.",
            f"- Decision: {DECISION_RULE}.", ""]


def precondition_lines(result: Mapping) -> list[str]:
    """## The precondition, start by start, with each start's headline numbers."""
    lines = ["## Precondition: do the starts' token maps ground?", "",
             "| start (pre-training seed) | token-map pointing, phrases without location words | image-free prior "
             "on them | phrases | held | zero-shot AUC | pointing (CAM maps) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for start in result["starts"]:
        check, metrics = start["precondition"], start["metrics"]
        held = "–" if check["held"] is None else ("yes" if check["held"] else "**no**")
        lines.append(f"| {start['seed']} | {number(check['pointing'])} | {number(check['prior'])} | "
                     f"{check['phrases'] if check['phrases'] is not None else '–'} | {held} | {number(metrics['auc'])} | "
                     f"{number(metrics['pointing_game_cam'])} |")
    held = result["preconditions_held"]
    lines += ["", "The precondition " + ("held on every start." if held else
                                          "did **not** hold on every start: TIER would sharpen maps that do not "
                                          "ground, so the decision rule below is not read (\"not tested\")."), ""]
    return lines


def manipulation_lines(result: Mapping) -> list[str]:
    """## Manipulation check and reading, one table row per TIER arm."""
    if not result["manipulation"]:
        return []
    lines = ["## Did TIER act? Manipulation check and reading", "",
             "At each arm's training scale, over the test pairs: the token→patch softmax's top-1 mass and entropy of "
             "the start, the clip control and the arm (mean over starts), the arm − clip difference paired within "
             "each start with its 95% t-interval, TIER's gradient norm over CLIP's on the start checkpoint at the "
             "arm's λ, and the most top-1 mass the scale allows (one patch at cosine +1, the rest at −1).", "",
             "| arm | scale | λ per start | TIER/CLIP gradient on the start | top-1 mass: start / clip / arm | "
             "Δ top-1 mass [95% CI] | reachable top-1 | H token→patch: start / clip / arm | "
             "Δ token-map pointing [95% CI] | reading |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, check in result["manipulation"].items():
        def mean(rows: Sequence[Mapping], metric: str) -> float:
            return sum(row[metric] for row in rows) / len(rows)

        top1, pointing = check["differences"]["top1_mass"], result["differences"][name]["pointing_game"]
        decision = result["decisions"][name]
        reading = decision["reading"] + ("" if decision["reading"] == decision["rule"] else
                                         f" (the rule alone: {decision['rule']})")
        lines.append(
            f"| {name} | {check['scale']} | {', '.join(f'{v:g}' for v in check['lambda_per_start'])} | "
            f"{', '.join(f'{100 * v:.2g}%' for v in check['ratio_on_start'])} | "
            + " / ".join(number(mean(check[k], "top1_mass")) for k in ("start", "clip", "arm"))
            + f" | {difference(top1)} {interval(top1)} | {number(min(check['max_top1_mass']))} | "
            + " / ".join(number(mean(check[k], "entropy_token_patch")) for k in ("start", "clip", "arm"))
            + f" | {difference(pointing)} {interval(pointing)} | **{reading}** |")
    uniform = next(iter(result["manipulation"].values()))["uniform"]
    lines += ["", f"A flat map has top-1 mass {uniform['top1_mass']:.3f}, top-{uniform['top_k']:g} mass "
                  f"{uniform['topk_mass']:.3f} and entropy ln P = {uniform['entropy_token_patch']:.3f}; "
                  "the top-k mass per arm and start is in demo.json (\"manipulation\").", ""]
    return lines
