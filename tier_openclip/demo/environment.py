"""What a demo run's numbers depend on besides the code: the data and the environment.

- ``data_fingerprint``: SHA-256 over the bytes the demo trains and evaluates on, in a fixed order
  and without paths or file times, so two runs agree exactly when their inputs do.
- ``environment``: package version (and git commit from a checkout), library versions, the CPU
  model and its vector extensions, and the code-path pins below.
- ``PINS``: torch (ATen), MKL and oneDNN each pick a code path by CPU, and on one 2-core AMD VM
  each of them changed the bits of a plain conv/matmul/softmax. The demo's training and
  evaluation processes run with all three pinned to AVX2, a level every x86-64 CPU of the last
  decade has, so that CPUs of different generations may take the same path (benchmarks/README.md,
  "Pinned code paths", has the cost and what was checked).
- ``comparison``: whether two runs' records say they can be compared number for number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

from tier_openclip import openclip_adapter as adapter

PINS: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The /proc/cpuinfo flags that name a vector extension a library may dispatch on.
VECTOR_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
# The fields two runs must share to give the same numbers (torch_threads: the children's, CHILD_THREADS).
ENVIRONMENT_KEYS = ("package", "torch", "numpy", "open_clip", "python", "cpu", "vector_extensions", "torch_threads",
                    "cpu_capability", "pins")


#: Every training and evaluation process of the demo runs on one thread, several at once
#: (runs.run_concurrently): a run's numbers then do not depend on how many cores the machine has
#: (torch's default thread count is the core count, and the thread count changes the bits), and on
#: 2 cores two one-thread trainings made 1.28x the steps per second of one two-thread training
#: (benchmarks/results/parallel-runs-amd-epyc-2cpu-2026-12-05/).
CHILD_THREADS: dict[str, str] = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def child_environ(pins: Mapping[str, str] | None) -> dict[str, str]:
    """The child processes' environment: os.environ with CHILD_THREADS and ``pins`` (None: no pins) set."""
    return {**os.environ, **CHILD_THREADS, **(pins or {})}


def cpu_description(cpuinfo: str | None = None) -> dict:
    """{"model", "vector_extensions"} from /proc/cpuinfo's first processor (or platform's names)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough: a VM's cores are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "vector_extensions": [flag for flag in VECTOR_FLAGS if flag in flags]}


def package_version() -> dict:
    """{"version", "commit"}: the installed version and, when run from a git checkout, its commit
    (with "+dirty" when tracked files differ from it); commit None otherwise."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("tier-openclip")
    except PackageNotFoundError:
        installed = None
    root = Path(__file__).resolve().parents[2]
    commit = None
    if (root / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10, check=True).stdout.strip()
            commit = head + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": installed, "commit": commit}


def environment(pins: Mapping[str, str] | None, process: Mapping | None = None, package: Mapping | None = None) -> dict:
    """The record of demo.json's "environment". ``process``: what the (pinned) evaluation process
    saw of itself (``process_view``): torch's thread count and the code path ATen chose;
    ``package``: package_version() as read when the run started (default: now)."""
    import numpy
    import open_clip
    import torch

    cpu = cpu_description()
    process = process or process_view()
    return {"package": dict(package or package_version()), "torch": torch.__version__, "numpy": numpy.__version__,
            "open_clip": open_clip.__version__, "python": platform.python_version(), "cpu": cpu["model"],
            "vector_extensions": cpu["vector_extensions"], "cores": os.cpu_count(),
            "torch_threads": process["torch_threads"], "cpu_capability": process["cpu_capability"],
            "pins": dict(pins or {})}


def process_view() -> dict:
    """torch's thread count and ATen's chosen code path, as this process sees them."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _update_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _update_text(digest, text: str) -> None:
    encoded = text.encode("utf-8")
    digest.update(len(encoded).to_bytes(8, "little") + encoded)  # length-prefixed: no two inputs run together


def train_fingerprint(train_csv: Path) -> str:
    """SHA-256 over the training table in its order: each row's image file name, image bytes and caption."""
    digest = hashlib.sha256()
    with open(train_csv, newline="") as handle:
        for row in csv.DictReader(handle, delimiter=adapter.TRAIN_CSV_SEPARATOR):
            path = Path(row[adapter.TRAIN_CSV_IMAGE_KEY])
            _update_text(digest, path.name)
            digest.update(path.stat().st_size.to_bytes(8, "little"))
            _update_file(digest, path)
            _update_text(digest, row[adapter.TRAIN_CSV_CAPTION_KEY])
    return digest.hexdigest()


#: JSON keys that record how a file was made, not the data: a segmentation set's meta.json keeps
#: the digest of the code that wrote it (to know when to rewrite), so a docstring edit changed the
#: fingerprint of the same bytes.
PROVENANCE_KEYS = frozenset({"inputs_digest"})


def folder_fingerprint(folders: Sequence[Path]) -> str:
    """SHA-256 over every file under ``folders`` (in this order, files by relative path): the
    relative path, the size and the bytes. JSON files are hashed with their absolute paths cut to
    the name, since they record where the data were written, and without ``PROVENANCE_KEYS``."""
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            _update_text(digest, path.relative_to(folder).as_posix())
            if path.suffix == ".json":
                _update_text(digest, json.dumps(_without_paths(json.loads(path.read_text()), folder), sort_keys=True))
            else:
                digest.update(path.stat().st_size.to_bytes(8, "little"))
                _update_file(digest, path)
    return digest.hexdigest()


def _without_paths(value, folder: Path):
    """A JSON value with strings naming a path under the data folder's parent made relative to it
    and ``PROVENANCE_KEYS`` left out."""
    root = str(folder.resolve().parent)
    if isinstance(value, dict):
        return {key: _without_paths(item, folder) for key, item in value.items() if key not in PROVENANCE_KEYS}
    if isinstance(value, list):
        return [_without_paths(item, folder) for item in value]
    if isinstance(value, str) and value.startswith(root):
        return value[len(root):]
    return value


def data_fingerprint(data: Mapping) -> dict:
    """{"train", "test", "sha256"}: the training table's images and captions, the test data
    (test shards, the evaluation and grounding folder, the segmentation set), and both together."""
    train = train_fingerprint(Path(data["train_csv"]))
    test_folders = [Path(data["test_shards"]).parent, Path(data["eval_dir"]), Path(data["seg_dir"])]
    if Path(data["grounding_dir"]) not in test_folders:
        test_folders.append(Path(data["grounding_dir"]))
    test = folder_fingerprint(test_folders)
    return {"train": train, "test": test, "sha256": hashlib.sha256(f"{train}\n{test}".encode()).hexdigest()}


def comparison(first: Mapping, second: Mapping) -> dict:
    """Whether two demo.json records can be compared: {"same_data", "environment_differences"
    (key -> [first, second]), "reading"}."""
    data = [r.get("data_fingerprint", {}).get("sha256") for r in (first, second)]
    same_data = data[0] is not None and data[0] == data[1]
    envs = [r.get("environment", {}) for r in (first, second)]
    differences = {key: [envs[0].get(key), envs[1].get(key)] for key in ENVIRONMENT_KEYS
                   if envs[0].get(key) != envs[1].get(key)}
    if not same_data:
        reading = ("not comparable: different data (or a record without a fingerprint); the numbers measure "
                   "different inputs")
    elif not differences:
        reading = "comparable: same data and same environment, so the numbers should agree bit for bit"
    else:
        reading = ("same data, different environment (" + ", ".join(differences) + "): compare like with like; "
                   "pre-trainings can differ in more than the last digits")
    return {"same_data": same_data, "environment_differences": differences, "reading": reading}
