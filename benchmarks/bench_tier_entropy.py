"""Benchmark TIER's token–patch entropy: eager reference vs torch.compile(reference) vs Triton kernel.

For each shape (N pairs, T text tokens, P patches, D dims) it times forward + backward (gradients
of h_text.sum() + h_image.sum() w.r.t. both token tensors) with triton.testing.do_bench, measures
the peak extra CUDA memory of one forward + backward (max_memory_allocated minus what was
allocated before), and compares the kernel with the HBM roofline: the bytes it must move at
least (read T and P for the forward, again for the backward, write dT and dP) over the device's
memory bandwidth. Prints a table and writes JSON (benchmarks/results/tier_entropy-<device>.json
unless --out says otherwise), rewritten after every shape so that a run stopped early keeps
what it measured. The Triton rows record the config the autotuner chose for each kernel.

With --e2e it instead times a full training step (forward, backward, AdamW step) of open_clip's
ViT-B-16 under bfloat16 autocast: ClipLoss alone vs TierLoss (ClipLoss + TIER entropies).

Needs a CUDA device (except --list-shapes). Run from the repository root:
    python benchmarks/bench_tier_entropy.py --quick
    python benchmarks/bench_tier_entropy.py --check --time-limit 150   # what gpu_check.py runs
    python benchmarks/bench_tier_entropy.py --dtype bfloat16 --out my.json
    python benchmarks/bench_tier_entropy.py --e2e
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

_STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
# Benchmark this checkout's code, not whatever copy of tier_openclip is installed.
sys.path.insert(0, str(REPO))

FULL_GRID = {"N": (64, 256, 1024), "T": (77, 128, 256), "P": (49, 196, 256), "D": (128, 512)}
QUICK_GRID = {"N": (64, 256), "T": (77, 128), "P": (196,), "D": (512,)}
HEADLINE = (256, 128, 196, 512)  # the targets below are stated for this shape in bfloat16 on an H100
# --check: the headline, then one shape away from it in each of N, T and P, D. torch.compile only
# at the headline: each new static shape costs it a fresh compilation, and no target needs it there.
CHECK_SWEEP = ((64, 77, 196, 512), (1024, 128, 196, 512), (256, 256, 49, 128))
TARGETS = {
    "speedup_vs_eager_min": 5.0,
    "speedup_vs_compile_min": 2.0,
    "memory_vs_eager_max": 0.10,
    "triton_fwd_bwd_us_max": 150.0,
    "roofline_fraction_min": 1 / 1.5,  # forward + backward within 1.5× of the HBM roofline
    "e2e_tier_over_clip_max": 1.03,
}
# Peak HBM bandwidth (TB/s) by device name, first match wins; anything else needs --hbm-tbps.
HBM_TBPS = (
    (r"H100 80GB HBM3|H100 SXM", 3.35),
    (r"H200", 4.8),
    (r"A100", 2.0),
)
DTYPES = ("bfloat16", "float16", "float32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="a subset of shapes: " + ", ".join(f"{k} in {v}" for k, v in QUICK_GRID.items()))
    parser.add_argument("--check", action="store_true",
                        help=f"the GPU check's shapes: the headline {HEADLINE}, then "
                             + ", ".join(map(str, CHECK_SWEEP)) + " without torch.compile")
    parser.add_argument("--shape", action="append", default=None, metavar="N,T,P,D",
                        help="benchmark this shape (repeatable); replaces the grid")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="token dtype (default bfloat16)")
    parser.add_argument("--scale", type=float, default=1.0, help="similarity scale (TIER: 1)")
    parser.add_argument("--no-mask", action="store_true",
                        help="no text mask (default: CLIP-like masks, each report valid up to a random length)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    parser.add_argument("--hbm-tbps", type=float, default=None,
                        help="peak HBM bandwidth in TB/s for the roofline (default: by device name: "
                             + ", ".join(f"{p.split('|')[0]} {v}" for p, v in HBM_TBPS) + ")")
    parser.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up time")
    parser.add_argument("--rep-ms", type=float, default=200.0, help="do_bench measuring time")
    parser.add_argument("--e2e", action="store_true", help="time ViT-B-16 training steps: ClipLoss vs TierLoss")
    parser.add_argument("--e2e-batch", type=int, default=256, help="batch size of --e2e (default 256)")
    parser.add_argument("--e2e-steps", type=int, default=20, help="timed steps of --e2e (after 5 warm-up steps)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="start no shape (or --e2e loss) that would likely end after S seconds; "
                             "the skipped ones are named in the JSON")
    parser.add_argument("--list-shapes", action="store_true",
                        help="print what would run, as JSON, and exit (no GPU needed)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output (default: benchmarks/results/tier_entropy[-e2e]-<device>.json)")
    return parser.parse_args(argv)


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def hbm_bandwidth(name: str, override: float | None) -> float | None:
    """Peak HBM bandwidth in TB/s; None (no roofline figures) for a device not in HBM_TBPS."""
    if override is not None:
        return override
    for pattern, tbps in HBM_TBPS:
        if re.search(pattern, name):
            return tbps
    print(f"no HBM bandwidth known for {name!r}: no roofline figures (pass --hbm-tbps, the device's peak "
          "in TB/s)", file=sys.stderr)
    return None


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(name: str) -> dict:
    """The device and software every figure was measured with."""
    from importlib import metadata

    import torch
    import triton

    props = torch.cuda.get_device_properties(0)
    packages = {}
    for dist in ("open_clip_torch", "timm", "numpy", "hypothesis", "pytest"):
        try:
            packages[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            packages[dist] = None
    return {
        "device": name,
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "driver": driver_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "packages": packages,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def save(report: dict, out: Path) -> None:
    """Write the JSON whole or not at all: a run killed mid-write keeps the previous version."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)


class Deadline:
    """Whether the next piece of work, judged by the longest so far, still ends inside the limit,
    counted from the start of the program (imports and model building count too)."""

    def __init__(self, limit_s: float | None):
        self.limit_s = limit_s
        self.start = _STARTED
        self.longest = 0.0

    def allows_another(self) -> bool:
        elapsed = time.monotonic() - self.start
        return self.limit_s is None or elapsed + self.longest <= self.limit_s

    def timed(self, work):
        began = time.monotonic()
        try:
            return work()
        finally:
            self.longest = max(self.longest, time.monotonic() - began)


# ----------------------------------------------------------------------------------------------
# Kernel micro-benchmark
# ----------------------------------------------------------------------------------------------


def make_inputs(n: int, t: int, p: int, d: int, dtype, masked: bool):
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device="cuda").manual_seed(0)
    text = F.normalize(torch.randn(n, t, d, device="cuda", generator=g), dim=-1).to(dtype).requires_grad_()
    image = F.normalize(torch.randn(n, p, d, device="cuda", generator=g), dim=-1).to(dtype).requires_grad_()
    mask = None
    if masked:  # like CLIP text: valid up to and including end-of-text, at a random position
        lengths = torch.randint(1, t + 1, (n,), device="cuda", generator=g)
        mask = torch.arange(t, device="cuda")[None, :] < lengths[:, None]
    return text, image, mask


def fwd_bwd(fn, text, image, mask, scale):
    import torch

    h_text, h_image = fn(text, image, mask, scale)
    return torch.autograd.grad(h_text.sum() + h_image.sum(), (text, image))


def peak_extra_bytes(step) -> int:
    import torch

    step()  # warm up: autotuning, compilation, allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_shape(shape, impls: dict, args, tbps: float | None) -> dict:
    import torch
    from triton.testing import do_bench

    from tier_openclip.kernels.tier_entropy import autotune_choices

    n, t, p, d = shape
    dtype = getattr(torch, args.dtype)
    text, image, mask = make_inputs(n, t, p, d, dtype, not args.no_mask)
    row: dict = {"N": n, "T": t, "P": p, "D": d}
    for name, fn in impls.items():
        step = lambda fn=fn: fwd_bwd(fn, text, image, mask, args.scale)  # noqa: E731
        try:
            row[f"{name}_mem_bytes"] = peak_extra_bytes(step)
            row[f"{name}_us"] = 1e3 * do_bench(step, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
        except Exception as exc:  # noqa: BLE001  # OOM, a compile error: the other columns still count
            row[f"{name}_mem_bytes"] = row[f"{name}_us"] = None
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            print(f"  {name} failed: {row[f'{name}_error']}", file=sys.stderr)
            torch.cuda.empty_cache()
    if "triton" in impls:
        row["triton_configs"] = [c for c in autotune_choices() if (c["T"], c["P"], c["D"]) == (t, p, d)]
    # Least traffic of any fused implementation: read T and P (forward), read them again
    # (backward), write dT and dP; the O(N·(T+P)) statistics are negligible.
    tokens_bytes = (text.numel() + image.numel()) * text.element_size()
    row["min_bytes"] = 3 * tokens_bytes
    row["roofline_us"] = row["min_bytes"] / (tbps * 1e12) * 1e6 if tbps else None
    kernel_us = row.get("triton_us")
    row["triton_roofline_fraction"] = row["roofline_us"] / kernel_us if kernel_us and tbps else None
    for name in impls:
        if name != "triton" and "triton" in impls:
            other = row.get(f"{name}_us")
            row[f"speedup_vs_{name}"] = other / kernel_us if other and kernel_us else None
            other_mem = row.get(f"{name}_mem_bytes")
            row[f"memory_vs_{name}"] = (row["triton_mem_bytes"] / other_mem
                                        if other_mem and row.get("triton_mem_bytes") is not None else None)
    return row


def shapes_from(args) -> list[tuple[tuple[int, int, int, int], bool]]:
    """(shape, whether torch.compile runs there) in the order they run."""
    compile_ = not args.no_compile
    if args.check:
        return [(HEADLINE, compile_)] + [(shape, False) for shape in CHECK_SWEEP]
    if args.shape:
        shapes = []
        for spec in args.shape:
            try:
                values = tuple(int(v) for v in spec.replace("x", ",").split(","))
            except ValueError:
                values = ()
            if len(values) != 4:
                raise SystemExit(f"--shape wants N,T,P,D, got {spec!r}")
            shapes.append((values, compile_))
        return shapes
    grid = QUICK_GRID if args.quick else FULL_GRID
    return [(shape, compile_) for shape in itertools.product(grid["N"], grid["T"], grid["P"], grid["D"])]


def plan(args) -> dict:
    """What a run with these arguments would do (--list-shapes)."""
    if args.e2e:
        return {"kind": "e2e", "model": "ViT-B-16", "batch": args.e2e_batch, "steps": args.e2e_steps,
                "losses": ["clip", "tier_triton", "tier_torch"], "time_limit_s": args.time_limit}
    shapes = [{"N": n, "T": t, "P": p, "D": d, "impls": ["eager", *(["compile"] if c else []), "triton"]}
              for (n, t, p, d), c in shapes_from(args)]
    return {"kind": "kernel", "dtype": args.dtype, "masked": not args.no_mask, "shapes": shapes,
            "time_limit_s": args.time_limit}


def fmt(value, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[dict], impls: list[str]) -> None:
    columns = ["N", "T", "P", "D"] + [f"{i} µs" for i in impls] + [f"{i} MiB" for i in impls]
    columns += [f"× vs {i}" for i in impls if i != "triton"] + ["roofline µs", "of roofline"]
    lines = [columns]
    for r in rows:
        line = [str(r[k]) for k in ("N", "T", "P", "D")]
        line += [fmt(r.get(f"{i}_us")) for i in impls]
        line += [fmt(None if r.get(f"{i}_mem_bytes") is None else r[f"{i}_mem_bytes"] / 2**20) for i in impls]
        line += [fmt(r.get(f"speedup_vs_{i}"), ".2f") for i in impls if i != "triton"]
        line += [fmt(r["roofline_us"]), fmt(r["triton_roofline_fraction"], ".0%")]
        lines.append(line)
    widths = [max(len(line[c]) for line in lines) for c in range(len(columns))]
    for k, line in enumerate(lines):
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def check_targets(rows: list[dict], args) -> dict | None:
    """The targets, checked only when this run measured their shape and dtype."""
    row = next((r for r in rows if (r["N"], r["T"], r["P"], r["D"]) == HEADLINE), None)
    if row is None or args.dtype != "bfloat16":
        return None
    checks = {
        "speedup_vs_eager": (row.get("speedup_vs_eager"), TARGETS["speedup_vs_eager_min"], ">="),
        "speedup_vs_compile": (row.get("speedup_vs_compile"), TARGETS["speedup_vs_compile_min"], ">="),
        "memory_vs_eager": (row.get("memory_vs_eager"), TARGETS["memory_vs_eager_max"], "<="),
        "triton_fwd_bwd_us": (row.get("triton_us"), TARGETS["triton_fwd_bwd_us_max"], "<="),
        "roofline_fraction": (row.get("triton_roofline_fraction"), round(TARGETS["roofline_fraction_min"], 3), ">="),
    }
    result = {}
    print(f"\ntargets at N,T,P,D = {HEADLINE}, bfloat16 (stated for an H100):")
    for name, (value, bound, op) in checks.items():
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        result[name] = {"value": value, "target": f"{op} {bound}", "met": met}
        print(f"  {name:20s} {fmt(value, '.3g'):>8s}  target {op} {bound:<6g}  "
              f"{'—' if met is None else ('met' if met else 'NOT met')}")
    return result


def run_kernels(args, report: dict, out: Path, tbps: float | None) -> dict:
    import torch

    from tier_openclip.kernels.reference import token_patch_entropy_reference
    from tier_openclip.kernels.tier_entropy import token_patch_entropy_triton

    impls = {"eager": token_patch_entropy_reference, "triton": token_patch_entropy_triton}
    if not args.no_compile:
        # One compiled graph per shape: without a higher limit dynamo would fall back to eager.
        torch._dynamo.config.recompile_limit = 1024
        torch._dynamo.config.accumulated_recompile_limit = 4096
        impls = {"eager": impls["eager"], "compile": torch.compile(token_patch_entropy_reference, dynamic=False),
                 "triton": impls["triton"]}

    report.update({"kind": "kernel", "dtype": args.dtype, "scale": args.scale, "masked": not args.no_mask,
                   "hbm_tbps": tbps, "rows": [], "skipped_shapes": [], "targets": None, "complete": False})
    deadline = Deadline(args.time_limit)
    for shape, with_compile in shapes_from(args):
        if not deadline.allows_another():
            report["skipped_shapes"].append(list(shape))
            continue
        print(f"N,T,P,D = {shape} …", file=sys.stderr, flush=True)
        here = {k: f for k, f in impls.items() if k != "compile" or with_compile}
        report["rows"].append(deadline.timed(lambda: bench_shape(shape, here, args, tbps)))
        save(report, out)
    rows = report["rows"]
    print(f"\n{report['device']}, {args.dtype}, scale {args.scale}, "
          f"{'no mask' if args.no_mask else 'CLIP-like masks'}, HBM {tbps} TB/s; forward + backward, "
          "median of do_bench:\n")
    print_table(rows, list(impls))
    if report["skipped_shapes"]:
        print(f"\nskipped for the time limit ({args.time_limit} s): "
              + ", ".join(map(str, report["skipped_shapes"])))
    report.update(targets=check_targets(rows, args), complete=not report["skipped_shapes"])
    return report


# ----------------------------------------------------------------------------------------------
# End to end: ViT-B-16 training step
# ----------------------------------------------------------------------------------------------


def run_e2e(args, report: dict, out: Path) -> dict:
    import open_clip
    import torch

    from tier_openclip.features import enable_token_outputs
    from tier_openclip.kernels.tier_entropy import autotune_choices
    from tier_openclip.loss import TierLoss

    torch.manual_seed(0)
    batch = args.e2e_batch
    model = open_clip.create_model("ViT-B-16", output_dict=True).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    # Random reports of random lengths; CLIP's end-of-text token (the largest id) closes each.
    context = model.context_length
    eot = model.vocab_size - 1
    texts = torch.randint(1, eot, (batch, context), device="cuda")
    lengths = torch.randint(5, context, (batch,), device="cuda")
    positions = torch.arange(context, device="cuda")[None, :]
    texts = torch.where(positions < lengths[:, None], texts, 0)
    texts[torch.arange(batch), lengths] = eot

    def timed(loss_fn) -> dict:
        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(images, texts)
                losses = loss_fn(**out, output_dict=True)
            sum(losses.values()).backward()
            optimizer.step()

        for _ in range(5):
            step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.e2e_steps):
            step()
        end.record()
        torch.cuda.synchronize()
        return {"step_ms": start.elapsed_time(end) / args.e2e_steps, "peak_bytes": torch.cuda.max_memory_allocated()}

    results: dict = {}
    bound = TARGETS["e2e_tier_over_clip_max"]
    report.update({"kind": "e2e", "model": "ViT-B-16", "batch": batch, "steps": args.e2e_steps, "results": results,
                   "skipped": [], "target": {"tier_over_clip": f"<= {bound}", "met": None}, "complete": False})
    deadline = Deadline(args.time_limit)
    losses = {"clip": open_clip.ClipLoss, "tier_triton": lambda: TierLoss(impl="triton"),
              "tier_torch": lambda: TierLoss(impl="torch")}
    for key, make_loss in losses.items():
        if not deadline.allows_another():
            report["skipped"].append(key)
            continue
        if key != "clip":
            enable_token_outputs(model)  # forward now also returns the token embeddings TierLoss needs
        try:
            results[key] = deadline.timed(lambda: timed(make_loss()))
        except Exception as exc:  # noqa: BLE001  # one failing loss leaves the others' figures
            results[key] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            print(f"  {key} failed: {results[key]['error']}", file=sys.stderr)
            torch.cuda.empty_cache()
        if key != "clip" and "step_ms" in results[key] and "step_ms" in results.get("clip", {}):
            results[key]["over_clip"] = results[key]["step_ms"] / results["clip"]["step_ms"]
        report["triton_configs"] = autotune_choices()
        save(report, out)

    print(f"\n{report['device']}: open_clip ViT-B-16, batch {batch}, bfloat16 autocast, AdamW; "
          f"mean of {args.e2e_steps} steps\n")
    for key, label in (("clip", "ClipLoss"), ("tier_triton", "TierLoss, Triton"), ("tier_torch", "TierLoss, torch")):
        r = results.get(key)
        if r is None or "step_ms" not in r:
            print(f"  {label:18s} {'skipped' if r is None else r['error']}")
            continue
        ratio = f"  ×{r['over_clip']:.3f} of ClipLoss" if "over_clip" in r else ""
        print(f"  {label:18s} {r['step_ms']:8.1f} ms/step  peak {r['peak_bytes'] / 2**30:6.2f} GiB{ratio}")
    ratio = results.get("tier_triton", {}).get("over_clip")
    met = None if ratio is None else ratio <= bound
    print(f"\ntarget: TierLoss (Triton) step ≤ {bound}× ClipLoss step (stated for an H100): "
          f"{'not measured' if met is None else ('met' if met else 'NOT met')}")
    report["target"]["met"] = met
    report["complete"] = not report["skipped"] and all("step_ms" in r for r in results.values())
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list_shapes:
            print(json.dumps(plan(args), indent=2))
            return 0
        shapes_from(args)  # a malformed --shape fails before any GPU work
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("bench_tier_entropy.py needs a CUDA device, and none is available here "
              "(the CPU interpreter, TRITON_INTERPRET=1, is for tests, not timings).", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name()
    out = args.out or REPO / "benchmarks" / "results" / (
        f"tier_entropy{'-e2e' if args.e2e else ''}-{device_slug(name)}.json")
    report = environment(name)
    if args.e2e:
        run_e2e(args, report, out)
    else:
        run_kernels(args, report, out, hbm_bandwidth(name, args.hbm_tbps))
    save(report, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
