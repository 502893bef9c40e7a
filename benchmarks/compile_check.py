"""Compile the Triton kernels for a GPU this machine does not have (sm_90, Hopper, by default).

Triton ships its own ptxas, so every autotune config the kernels' pruner keeps at a shape can be
compiled here, on the CPU, with the very specialisation a launch would use (the JIT's own binder
on the same argument values). For each config it prints and records the compile time, registers
per thread, spill stack, local memory and shared memory: compile errors, spills and configs that
cannot launch show up before any GPU time is spent, and the sum of the compile times bounds what
a first cold autotuning costs. Needs no GPU and no CUDA driver: a stand-in driver names the
target. Compile times are this machine's; a GPU machine's CPU is usually faster.

    python benchmarks/compile_check.py                        # headline shape, bfloat16, masked
    python benchmarks/compile_check.py --shape 4,512,1024,1024 --dtype float32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's kernels, not an installed copy

HEADLINE = (256, 128, 196, 512)
DTYPES = ("bfloat16", "float16", "float32")
# Largest dynamic shared memory one block may use on sm_80 / sm_90 (CUDA programming guide).
MAX_SHARED = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--arch", type=int, default=90, help="compute capability × 10 (default 90: H100/H200)")
    parser.add_argument("--shape", default=",".join(map(str, HEADLINE)), metavar="N,T,P,D",
                        help="problem shape (default: the headline %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="token dtype (default bfloat16)")
    parser.add_argument("--no-mask", action="store_true", help="compile the variants without a text mask")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


class _TargetOnlyDriver:
    """What the JIT asks the driver for when it only compiles (warmup): device, stream, target."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def _cuobjdump() -> str | None:
    import triton.backends.nvidia as nvidia

    path = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    return str(path) if path.is_file() else None


def resource_usage(cubin: bytes, tool: str | None) -> dict:
    """Registers, stack (spills) and local memory of the one function in a cubin."""
    if tool is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        out = subprocess.run([tool, "-res-usage", str(path)], capture_output=True, text=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out))
    return {"registers": int(found["REG"]), "stack_bytes": int(found["STACK"]), "local_bytes": int(found["LOCAL"])} \
        if {"REG", "STACK", "LOCAL"} <= found.keys() else {}


def launch_arguments(kernels, shape, dtype, masked: bool) -> dict:
    """For each kernel: (positional args, constexpr kwargs, autotuned?) as TokenPatchEntropyFunction
    launches it on contiguous inputs; pointers are given as dtypes (the JIT's warmup takes those)."""
    import torch
    import triton

    n, t, p, d = shape
    f32, mask_t = torch.float32, torch.uint8
    block_d = max(16, triton.next_power_of_2(d))
    block_t = kernels._fwd_block_t(t, block_d)
    t_blocks = triton.cdiv(t, block_t)
    mask_strides = (t, 1) if masked else (0, 0)
    mask_ptr = mask_t if masked else dtype
    strides = (t * d, d, 1, p * d, d, 1, *mask_strides)
    precision = kernels._precision(dtype)
    common = dict(HAS_MASK=masked, PRECISION=precision)
    # Upstream gradients of h.sum() arrive expanded: stride 0, as in the benchmark.
    bwd = [dtype, dtype, mask_ptr, dtype, f32, f32, f32, f32, f32, f32, f32, t, p, d, 1.0, *strides, 0, 0]
    bwd_meta = dict(common, GRAD_IN_FP32=dtype != torch.bfloat16, BLOCK_D=block_d)
    return {
        "forward": (kernels._tier_fwd_kernel,
                    [dtype, dtype, mask_ptr, f32, f32, f32, f32, f32, t, p, d, t_blocks, 1.0, *strides],
                    dict(common, BLOCK_T=block_t, BLOCK_D=block_d)),
        "forward_reduce": (kernels._tier_fwd_reduce_kernel,
                           [mask_ptr, *[f32] * 10, t, p, t_blocks, *mask_strides],
                           dict(HAS_MASK=masked, BLOCK=128)),
        "backward_text": (kernels._tier_bwd_text_kernel, bwd, bwd_meta),
        "backward_image": (kernels._tier_bwd_image_kernel, bwd, bwd_meta),
    }


def compile_all(arch: int, shape, dtype_name: str, masked: bool) -> dict:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("compile_check.py compiles for a GPU: unset TRITON_INTERPRET")
    import torch
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.driver import driver

    driver.set_active(_TargetOnlyDriver(arch))
    from tier_openclip.kernels import tier_entropy as kernels

    dtype = getattr(torch, dtype_name)
    tool = _cuobjdump()
    max_shared = MAX_SHARED.get(arch)
    report: dict = {"arch": arch, "shape": dict(zip("NTPD", shape)), "dtype": dtype_name, "masked": masked,
                    "kernels": {}}
    for name, (kernel, args, meta) in launch_arguments(kernels, shape, dtype, masked).items():
        if isinstance(kernel, Autotuner):
            named = {"text_ptr": torch.empty(0, dtype=dtype)}  # what the pruner reads: the element size
            kept = kernel.early_config_prune(kernel.configs, named, **meta)
            configs = [(c, c in kept) for c in kernel.configs]
            jit = kernel.fn
        else:
            configs, jit = [(None, True)], kernel
        rows = []
        for config, is_kept in configs:
            options = config.all_kwargs() if config else {}
            row = {"config": {k: v for k, v in options.items() if v is not None}, "kept_by_pruner": is_kept}
            if is_kept:
                start = time.perf_counter()
                compiled = jit.warmup(*args, grid=(1,), **meta, **options)
                row["compile_s"] = round(time.perf_counter() - start, 2)
                row["shared_bytes"] = compiled.metadata.shared
                row.update(resource_usage(compiled.asm["cubin"], tool))
                row["spills"] = bool(row.get("stack_bytes") or row.get("local_bytes"))
                row["launches"] = max_shared is None or compiled.metadata.shared <= max_shared
            rows.append(row)
        report["kernels"][name] = rows
    report["cold_compile_s"] = round(sum(r.get("compile_s", 0) for rows in report["kernels"].values() for r in rows), 1)
    return report


def print_report(report: dict) -> None:
    print(f"sm_{report['arch']}, N,T,P,D = {tuple(report['shape'].values())}, {report['dtype']}, "
          f"{'masked' if report['masked'] else 'no mask'}")
    for name, rows in report["kernels"].items():
        print(f"\n{name}")
        for r in rows:
            cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k not in ("num_ctas",)) or "(no autotuning)"
            if not r["kept_by_pruner"]:
                print(f"  {cfg:58s} pruned")
                continue
            flags = [w for w, bad in (("SPILLS", r["spills"]), ("TOO MUCH SHARED MEMORY", not r["launches"])) if bad]
            print(f"  {cfg:58s} {r['compile_s']:5.1f} s  {r.get('registers', '?'):>3} regs  "
                  f"stack {r.get('stack_bytes', '?'):>4} B  shared {r['shared_bytes'] / 1024:6.1f} KiB  {' '.join(flags)}")
    print(f"\nfirst cold compile of every kept config: {report['cold_compile_s']} s on this machine")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
        if len(shape) != 4:
            raise ValueError
    except ValueError:
        print(f"--shape wants N,T,P,D, got {args.shape!r}", file=sys.stderr)
        return 2
    # A fresh cache: every compile is timed cold, as on a GPU machine that starts bare.
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        report = compile_all(args.arch, shape, args.dtype, not args.no_mask)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    bad = [r for rows in report["kernels"].values() for r in rows if r["kept_by_pruner"] and not r["launches"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
