"""Every GPU figure in one command: the GPU tests, the kernel benchmark and the training-step ratio.

    python3 benchmarks/gpu_check.py OUT_DIR                # on a CUDA machine, from the repo root
    python3 benchmarks/gpu_check.py --dry-run OUT_DIR      # anywhere: the plan, checked

A GPU machine may be lent for minutes, start bare and have no package index. So the check first
installs what its parts import from wheels carried in the working tree (benchmarks/gpu_wheels.txt
names them, benchmarks/fetch_gpu_wheels.sh fetches them into benchmarks/wheels/, which git
ignores and the tree must carry), then runs three parts, each in its own process under its own
time limit, so one hang costs that part and no more:

  tests   pytest -m gpu: every kernel test at full size against the float64 reference, and the
          peak-memory test                                                     -> tests.json
  kernel  bench_tier_entropy.py --check: the headline shape (N, T, P, D = 256, 128, 196, 512,
          bfloat16) against eager and torch.compile, and a small sweep         -> kernel.json
  e2e     bench_tier_entropy.py --e2e: a ViT-B/16 training step at batch 256, ClipLoss vs
          TierLoss                                                             -> e2e.json

Each JSON names the device, driver, torch and triton versions and holds every figure; summary.json
says how each part ended and what was skipped, and gpu_check.log holds all output: five files.
A part that would start with less time left of --budget-s than it needs is skipped, and said so.
At limit a part gets SIGINT (pytest then still writes its report, the benchmarks keep what they
measured), then SIGKILL. Exit status: 0 when every part ran and passed, 1 otherwise.

--dry-run needs no GPU and no wheels: it resolves the wheel list (reports missing wheels and the
fetch command; --require-wheels makes them an error), checks that the wheels' requirements and
everything the parts import is carried or on the GPU machine's image, lists the tests (pytest
--collect-only -m gpu) and the shapes each benchmark would run, checks that the tree and the
wheels fit what a GPU machine takes along, and writes the output files the real run would
write, checking their layout. Exit status 1 names each problem.

The machinery the plan runs on (the log, a part under its time limit, the junit report, the output
layout a machine gives back) is gpu_check_io.py beside this file: standard library only, like this.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_check_io.py, gpu_wheels.py beside it, however this is loaded
from gpu_check_io import (  # noqa: E402,F401 -- MAX_FILES: tests read the limits from the check
    MAX_FILES, MAX_TREE_BYTES, Log, junit_report, layout_problems, read_json, run_limited, travelling_bytes, write_json,
)
from gpu_wheels import (  # noqa: E402
    FETCH_COMMAND, ON_GPU_IMAGE, REPO, WHEEL_DIR, install_wheels, normalize, read_wheel_list, resolve_wheels,
)

BENCH = "benchmarks/bench_tier_entropy.py"
PROJECT = "tier-openclip"  # runs from the checkout (PYTHONPATH), never installed there
# What the benchmarks import besides what collecting the tests does (run_e2e, run_kernels).
BENCH_IMPORTS = ("open_clip", "tier_openclip.features", "tier_openclip.loss", "tier_openclip.kernels.reference",
                 "tier_openclip.kernels.tier_entropy", "triton.testing")

LOG_NAME = "gpu_check.log"
SUMMARY_NAME = "summary.json"
GRACE_S = 20  # between SIGINT and SIGKILL
DEFAULT_BUDGET_S = 470  # under 8 minutes, start-up included


@dataclass(frozen=True)
class Part:
    name: str  # also its JSON's stem
    limit_s: int  # its own time limit
    min_s: int  # skipped when less than this is left of the budget
    what: str

    @property
    def json_name(self) -> str:
        return f"{self.name}.json"


PARTS = (
    Part("tests", 180, 60, "pytest -m gpu (full-size kernel tests, peak memory)"),
    Part("kernel", 150, 60, "kernel benchmark: headline shape + sweep"),
    Part("e2e", 120, 45, "ViT-B/16 training step, ClipLoss vs TierLoss"),
)
OUTPUT_NAMES = {LOG_NAME, SUMMARY_NAME, *(p.json_name for p in PARTS)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("out_dir", type=Path, help="folder for the JSON files and the log (at most 8 files)")
    parser.add_argument("--dry-run", action="store_true", help="check the plan on any machine; run nothing on a GPU")
    parser.add_argument("--require-wheels", action="store_true", help="with --dry-run: missing wheels are an error")
    parser.add_argument("--wheel-dir", type=Path, default=WHEEL_DIR, help="where the wheels are (default %(default)s)")
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS),
                        help="comma list of parts to run, in order (default %(default)s)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="time for all parts together; a part is skipped when less than it needs is left "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    names = [n for n in args.parts.split(",") if n]
    unknown = sorted(set(names) - {p.name for p in PARTS})
    if unknown or not names:
        parser.error(f"--parts takes some of {', '.join(p.name for p in PARTS)}; got {args.parts!r}")
    args.parts = [p for name in names for p in PARTS if p.name == name]
    return args


# ----------------------------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------------------------


def gpu_test_files() -> list[str]:
    """Test modules that mark tests `gpu`; only these are collected on the GPU machine, so the
    rest of the suite's dependencies (pydicom, webdataset, ...) need not travel."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text())


def part_command(part: Part, out_dir: Path, scratch: Path, limit_s: float) -> list[str]:
    py = sys.executable
    if part.name == "tests":
        return [py, "-m", "pytest", "-m", "gpu", *gpu_test_files(), "-v", "-p", "no:cacheprovider",
                "-o", "junit_family=xunit1", f"--junitxml={scratch / 'junit.xml'}", "--durations=0"]
    # The benchmark stops starting new work a little before the limit, so the limit rarely bites.
    own_limit = f"{max(limit_s - 15, 1):.0f}"
    if part.name == "kernel":
        return [py, BENCH, "--check", "--time-limit", own_limit, "--out", str(out_dir / part.json_name)]
    return [py, BENCH, "--e2e", "--time-limit", own_limit, "--out", str(out_dir / part.json_name)]


def probe_environment(env: dict, log: Log) -> dict | None:
    """Device, driver and versions, from a child (a hung CUDA initialisation cannot hang the check)."""
    code = ("import json, sys, torch; sys.path.insert(0, 'benchmarks'); import bench_tier_entropy as b; "
            "print('GPU_CHECK_ENV ' + json.dumps(b.environment(torch.cuda.get_device_name()) "
            "if torch.cuda.is_available() else None))")
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        log.note("the environment probe hung for 120 s")
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("GPU_CHECK_ENV ")]
    if not lines:
        log.write(done.stdout + done.stderr)
        return None
    return json.loads(lines[-1].split(" ", 1)[1])


def child_environment(site: Path | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)  # compiled kernels: the interpreter is for CPU tests
    paths = [str(site)] if site else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def run_check(args: argparse.Namespace) -> int:
    # A shell that starts this in the background ignores SIGINT, and the parts would inherit that:
    # a handler here (reset to the default at exec) lets them stop cleanly at their limit.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / LOG_NAME)
    started = time.monotonic()
    summary: dict = {"tool": "benchmarks/gpu_check.py", "dry_run": False, "budget_s": args.budget_s,
                     "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {}, "skipped": []}
    try:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch_dir:
            scratch = Path(scratch_dir)
            site = scratch / "site"
            summary["install"] = install = install_wheels(read_wheel_list(), args.wheel_dir, site, log)
            env = child_environment(site)
            if "error" in install:
                log.note(install["error"])
                return finish(summary, out, log, started, ok=False)
            log.note(f"installed {', '.join(install['installed']) or 'nothing'}; "
                     f"already there: {', '.join(install['already_there']) or 'nothing'}")
            summary["environment"] = environment = probe_environment(env, log)
            if environment is None:
                log.note("no CUDA device here (or torch cannot reach it): use --dry-run to check the plan")
                return finish(summary, out, log, started, ok=False)
            log.note(f"{environment['device']}, driver {environment['driver']}, torch {environment['torch']}, "
                     f"triton {environment['triton']}")
            deadline = started + args.budget_s
            for part in args.parts:
                left = deadline - time.monotonic()
                if left < part.min_s:
                    reason = f"{left:.0f} s left of the {args.budget_s:.0f} s budget; it needs {part.min_s} s"
                    summary["skipped"].append({"part": part.name, "reason": reason})
                    log.note(f"skipped {part.name} ({part.what}): {reason}")
                    write_json(out / part.json_name, {**environment, "part": part.name, "status": "skipped",
                                                      "reason": reason})
                    continue
                limit = min(part.limit_s, left - GRACE_S)
                command = part_command(part, out, scratch, limit)
                log.note(f"{part.name}: {part.what}, limit {limit:.0f} s\n+ {' '.join(command)}")
                rc, status, seconds = run_limited(command, limit, log, env, GRACE_S)
                check = {"part": part.name, "status": status, "returncode": rc, "seconds": seconds,
                         "limit_s": round(limit), "command": command}
                summary["parts"][part.name] = check
                log.note(f"{part.name}: {status} after {seconds:.0f} s (exit status {rc})")
                if part.name == "tests":
                    report = {**environment, **junit_report(scratch / "junit.xml")}
                else:  # the benchmark wrote its own JSON, figure by figure; add how it ended
                    report = read_json(out / part.json_name) or {**environment, "error": "no figures written"}
                write_json(out / part.json_name, {**report, "check": check})
    except Exception as exc:  # noqa: BLE001  # whatever happens, the summary and log still come back
        log.note(f"gpu_check itself failed: {type(exc).__name__}: {exc}")
        summary["error"] = f"{type(exc).__name__}: {exc}"
        return finish(summary, out, log, started, ok=False)
    ok = all(c["status"] == "ok" for c in summary["parts"].values()) and not summary["skipped"]
    return finish(summary, out, log, started, ok=ok)


def finish(summary: dict, out: Path, log: Log, started: float, ok: bool) -> int:
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["ok"] = ok
    for name, check in summary["parts"].items():
        log.note(f"  {name:7s} {check['status']:8s} {check['seconds']:6.0f} s")
    for skipped in summary["skipped"]:
        log.note(f"  {skipped['part']:7s} SKIPPED  {skipped['reason']}")
    write_json(out / SUMMARY_NAME, summary)
    problems = layout_problems(out)
    for problem in problems:
        log.note(f"output layout: {problem}")
    log.note(f"{'done' if ok and not problems else 'done, with problems'} in {summary['seconds']:.0f} s; "
             f"files in {out}")
    log.close()
    if problems:  # the summary must say so too; it is rewritten, the log is already complete
        summary["layout_problems"] = problems
        write_json(out / SUMMARY_NAME, summary)
    return 0 if ok and not problems else 1


# ----------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------

_AUDIT = r"""
import json, sys
import pytest

class Collect:
    ids = []
    def pytest_collection_finish(self, session):
        Collect.ids = [item.nodeid for item in session.items]

rc = pytest.main(["--collect-only", "-qq", "-m", "gpu", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[Collect()])
for module in json.loads(sys.argv[1]):
    __import__(module)
from importlib import metadata
tops = {name.split(".")[0] for name in list(sys.modules)}
mapping = metadata.packages_distributions()
print("GPU_CHECK_AUDIT " + json.dumps({"rc": int(rc), "tests": Collect.ids,
      "distributions": sorted({d for top in tops for d in mapping.get(top, ())})}))
"""


def _requirement_closure(names: set[str]) -> set[str]:
    """names and, transitively, what their installed distributions require here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalize(requirement.name))
    return seen


def audit_imports(files: list[str], log: Log) -> dict:
    """Collect the GPU tests and import what the benchmarks import, in a child; report the tests
    and every distribution loaded."""
    done = subprocess.run([sys.executable, "-c", _AUDIT, json.dumps(BENCH_IMPORTS), *files], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines = [line for line in done.stdout.splitlines() if line.startswith("GPU_CHECK_AUDIT ")]
    if not lines:
        log.write(done.stdout[-4000:] + done.stderr[-4000:])
        return {"rc": done.returncode, "tests": [], "distributions": [], "error": "collection or imports failed"}
    return json.loads(lines[-1].split(" ", 1)[1])


def bench_plan(part: Part, out: Path, scratch: Path, log: Log) -> dict:
    """The part's real command with --list-shapes: its arguments parse, and this is what it runs."""
    command = part_command(part, out, scratch, part.limit_s) + ["--list-shapes"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        log.write(done.stdout + done.stderr)
        return {"error": f"{' '.join(command)} exited with {done.returncode}"}
    return json.loads(done.stdout)


def dry_run(args: argparse.Namespace) -> int:
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / LOG_NAME)
    started = time.monotonic()
    problems: list[str] = []
    log.note("dry run: nothing runs on a GPU")

    pins = read_wheel_list()
    wheels = resolve_wheels(pins, args.wheel_dir)
    problems += wheels["problems"]
    if wheels["missing"]:
        message = (f"missing wheels in {args.wheel_dir}: {', '.join(wheels['missing'])}; fetch them with "
                   f"{FETCH_COMMAND}")
        (problems.append if args.require_wheels else log.note)(message)
    log.note(f"wheels: {len(wheels['present'])} of {len(pins)} present")

    files = gpu_test_files()
    audit = audit_imports(files, log)
    if audit.get("error") or audit["rc"] != 0:
        problems.append(f"collecting {' '.join(files)} -m gpu failed (pytest status {audit['rc']})")
    elif not audit["tests"]:
        problems.append("no test is marked gpu")
    covered = set(pins) | _requirement_closure(set(ON_GPU_IMAGE)) | {PROJECT}
    uncovered = sorted(d for d in map(normalize, audit["distributions"]) if d not in covered)
    if uncovered:
        problems.append(f"the GPU parts import {', '.join(uncovered)}: neither carried (gpu_wheels.txt) nor "
                        "on the GPU machine's image (gpu_check.py's ON_GPU_IMAGE)")
    log.note(f"tests (pytest -m gpu {' '.join(files)}): {len(audit['tests'])}")
    for test in audit["tests"]:
        log.write(f"    {test}\n")

    tree, wheel_bytes = travelling_bytes(args.wheel_dir)
    sizes = {"tree_bytes": tree, "wheel_bytes": wheel_bytes}
    if tree is None:
        log.note("no git here: the working tree's size is not checked")
    elif tree + wheel_bytes > MAX_TREE_BYTES:
        problems.append(f"tree {tree / 2**20:.1f} MiB + wheels {wheel_bytes / 2**20:.1f} MiB exceed what a GPU "
                        f"machine takes along ({MAX_TREE_BYTES // 2**20} MiB)")
    else:
        log.note(f"travels: tree {tree / 2**20:.1f} MiB + wheels {wheel_bytes / 2**20:.1f} MiB "
                 f"of {MAX_TREE_BYTES // 2**20} MiB")

    plans = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        time_left = args.budget_s
        for part in args.parts:
            limit = min(part.limit_s, time_left - GRACE_S)
            time_left -= part.limit_s
            command = part_command(part, out, Path(scratch), part.limit_s)
            plan = {"part": part.name, "dry_run": True, "what": part.what, "limit_s": part.limit_s,
                    "min_s": part.min_s, "command": command}
            if part.name == "tests":
                plan["tests"] = audit["tests"]
            else:
                plan["plan"] = bench_plan(part, out, Path(scratch), log)
                if "error" in plan["plan"]:
                    problems.append(plan["plan"]["error"])
                else:
                    shapes = plan["plan"].get("shapes")
                    log.note(f"{part.name}: " + (", ".join(f"{s['N']}x{s['T']}x{s['P']}x{s['D']} "
                                                           f"({'+'.join(s['impls'])})" for s in shapes)
                                                 if shapes else json.dumps(plan["plan"])))
            if limit < part.min_s:
                log.note(f"{part.name} would be skipped: the budget of {args.budget_s:.0f} s leaves it "
                         f"{max(limit, 0):.0f} s at worst, it needs {part.min_s} s")
            plans[part.name] = plan
            write_json(out / part.json_name, plan)

    summary = {"tool": "benchmarks/gpu_check.py", "dry_run": True, "budget_s": args.budget_s,
               "wheels": wheels, "imported_distributions": audit["distributions"], "sizes": sizes,
               "parts": {name: {k: v for k, v in plan.items() if k not in ("tests", "plan")}
                         for name, plan in plans.items()},
               "outputs": sorted(OUTPUT_NAMES), "problems": problems}
    write_json(out / SUMMARY_NAME, summary)
    log.note(f"dry run done in {time.monotonic() - started:.0f} s")
    log.close()
    layout = layout_problems(out)
    unexpected = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                        and str(p.relative_to(out)) not in OUTPUT_NAMES)
    problems += layout + [f"{name} is in {out} but not written by gpu_check" for name in unexpected]
    if problems != summary["problems"]:
        summary["problems"] = problems
        write_json(out / SUMMARY_NAME, summary)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return dry_run(args) if args.dry_run else run_check(args)
    except (OSError, ValueError) as exc:  # an unreadable wheel list, an unwritable folder
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
