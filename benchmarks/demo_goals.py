"""Check a `tier-openclip demo` run against the demo's goals (issue 20), or compare two runs.

    python benchmarks/demo_goals.py tier-demo/demo.json
    python benchmarks/demo_goals.py --compare A/demo.json B/demo.json

Goals, for the default `tier-openclip demo` on 2 quiet CPU cores:
- total wall time <= 10 minutes;
- at least 3 pre-training starts (the interval over starts needs them);
- the image-free prior's pointing game <= 0.15: a model cannot point well by knowing where a
  finding usually is (the phantom's grounding layout puts lung findings anywhere in the lungs);
- every start's token-map pointing above that prior on the phrases without location words (the
  report's precondition: TIER is compared only on maps that ground);
- every finding's CLIP zero-shot AUC (the clip arm, mean over starts) in 0.70-0.95, where a change
  can show (neither at chance nor at the ceiling);
- the run names its data fingerprint and environment (demo.json, and report.md beside it);
- with a local-uniformity arm (issue 13): its patch embeddings not collapsed (mean within-sample
  cosine below 0.9).
Prints one line per goal and exits 0 when all are met, 1 otherwise (2 for an unreadable file).

``--compare`` first says whether the two runs are comparable (same data fingerprint, same
environment: tier_openclip.demo.environment.comparison), then compares their numbers: every
start's and arm's metrics, run by run. Exits 0 when the runs are comparable and every number is
the same, 1 otherwise; with different data it stops before the numbers.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

MAX_WALL_SECONDS = 600.0
MIN_STARTS = 3
MAX_PRIOR_POINTING = 0.15
AUC_RANGE = (0.70, 0.95)
MAX_PATCH_COSINE = 0.9  # tier_openclip.demo.collapse.COLLAPSE_LINE
ENVIRONMENT_FIELDS = ("package", "torch", "numpy", "open_clip", "cpu", "vector_extensions", "torch_threads", "pins")


def check_goals(result: dict, report: str | None = None) -> list[tuple[str, bool, str]]:
    """(goal, met, measured) for each goal, from a demo.json's content (and its report.md's text)."""
    wall = result["timings"]["total_seconds"]
    starts = result.get("starts", [])
    prior = result["baselines"]["prior"]["pointing_game"]
    checks = [start["precondition"] for start in starts]
    aucs = result.get("per_finding_auc", {}).get("clip", {})
    low, high = AUC_RANGE
    fingerprint = result.get("data_fingerprint", {}).get("sha256")
    env = result.get("environment", {})
    named = bool(fingerprint) and all(env.get(k) not in (None, "", []) for k in ENVIRONMENT_FIELDS if k != "pins")
    in_report = report is None or (bool(fingerprint) and fingerprint in report and str(env.get("cpu")) in report)
    goals = [
        (f"wall time <= {MAX_WALL_SECONDS / 60:.0f} min", wall <= MAX_WALL_SECONDS, f"{wall / 60:.1f} min"),
        (f"at least {MIN_STARTS} pre-training starts", len(starts) >= MIN_STARTS, f"{len(starts)}"),
        (f"image-free prior pointing game <= {MAX_PRIOR_POINTING:.2f}", prior is not None and prior <= MAX_PRIOR_POINTING,
         f"{prior if prior is None else round(prior, 3)}"),
        ("every start's token-map pointing (phrases without location words) > the image-free prior on them",
         bool(checks) and all(c["held"] for c in checks),
         ", ".join(f"{_round(c['pointing'])} vs {_round(c['prior'])}" for c in checks) or "no starts"),
        (f"every finding's clip zero-shot AUC in {low:.2f}-{high:.2f}",
         bool(aucs) and all(low <= entry["mean"] <= high for entry in aucs.values()),
         ", ".join(f"{finding} {entry['mean']:.3f}" for finding, entry in aucs.items()) or "no per-finding AUC"),
        ("demo.json and report.md name the data fingerprint and the environment", named and in_report,
         f"fingerprint {fingerprint[:12] + '…' if fingerprint else None}, cpu {env.get('cpu')}, pins {env.get('pins')}"
         + ("" if in_report else "; report.md lacks them")),
    ]
    if "local-uniformity" in result["summary"]:
        cosine = result["summary"]["local-uniformity"]["cos_patches"]["mean"]
        goals.append((f"local-uniformity patch cosine < {MAX_PATCH_COSINE:g} (not collapsed)",
                      cosine < MAX_PATCH_COSINE, f"{cosine:.3f}"))
    return goals


def _round(value):
    return value if value is None else round(value, 3)


def _numbers(result: dict) -> dict[str, float]:
    """Every per-run metric of a demo.json, keyed "run/metric" (starts, then each arm's runs)."""
    out = {}
    for start in result.get("starts", []):
        out.update({f"start {start['seed']}/{k}": v for k, v in start["metrics"].items()})
    for arm, rows in result.get("rows", {}).items():
        for index, row in enumerate(rows):
            out.update({f"{arm} (start {index})/{k}": v for k, v in row.items()})
    return out


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare(first: dict, second: dict) -> tuple[bool, list[str]]:
    """(comparable and identical, the lines to print) for two demo.json contents."""
    from tier_openclip.demo.environment import comparison

    reading = comparison(first, second)
    lines = [f"comparability: {reading['reading']}"]
    for key, (a, b) in reading["environment_differences"].items():
        lines.append(f"  {key}: {a} | {b}")
    if not reading["same_data"]:
        return False, lines
    a, b = _numbers(first), _numbers(second)
    differing = [key for key in sorted(set(a) | set(b)) if not _same(a.get(key), b.get(key))]
    lines.append(f"numbers: {len(a)} vs {len(b)} per-run metrics, {len(differing)} differ")
    lines += [f"  {key}: {a.get(key)} | {b.get(key)}" for key in differing[:40]]
    if len(differing) > 40:
        lines.append(f"  ... and {len(differing) - 40} more")
    return not reading["environment_differences"] and not differing and len(a) == len(b), lines


def _read(path: str) -> dict:
    return json.loads(Path(path).read_text())


def main(argv: list[str]) -> int:
    usage = __doc__.strip().splitlines()
    if argv[:1] == ["--compare"]:
        if len(argv) != 3:
            print(f"usage: {usage[3].strip()}", file=sys.stderr)
            return 2
        try:
            first, second = _read(argv[1]), _read(argv[2])
        except (OSError, ValueError) as exc:
            print(f"demo_goals: not a readable demo.json ({exc})", file=sys.stderr)
            return 2
        same, lines = compare(first, second)
        print("\n".join(lines))
        return 0 if same else 1
    if len(argv) != 1:
        print(f"usage: {usage[2].strip()}\n       {usage[3].strip()}", file=sys.stderr)
        return 2
    try:
        result = _read(argv[0])
        report_path = Path(argv[0]).with_name("report.md")
        goals = check_goals(result, report_path.read_text() if report_path.is_file() else None)
    except (OSError, ValueError, KeyError) as exc:
        print(f"demo_goals: {argv[0]}: not a readable demo.json of this version ({exc})", file=sys.stderr)
        return 2
    setup, env = result.get("setup", {}), result.get("environment", {})
    print(f"{argv[0]}: --size {setup.get('size')}, {setup.get('starts')} starts, on {env.get('cpu')} "
          f"({env.get('cores')} cores)")
    for goal, met, measured in goals:
        print(f"  {'PASS' if met else 'FAIL'}  {goal}: {measured}")
    return 0 if all(met for _, met, _ in goals) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
