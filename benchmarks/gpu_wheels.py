"""The wheels benchmarks/gpu_check.py installs on a bare GPU machine: benchmarks/gpu_wheels.txt
names them (name==version per line), benchmarks/fetch_gpu_wheels.sh fetches them into
benchmarks/wheels/, and the check resolves and installs them without a package index."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WHEEL_LIST = REPO / "benchmarks" / "gpu_wheels.txt"
WHEEL_DIR = REPO / "benchmarks" / "wheels"
FETCH_COMMAND = "sh benchmarks/fetch_gpu_wheels.sh"
# Distributions the GPU machine's image provides (its package list, read 2026-11): the parts may
# import these, and whatever these need, without a carried wheel.
ON_GPU_IMAGE = frozenset({
    "torch", "torchvision", "triton", "numpy", "timm", "regex", "huggingface-hub", "safetensors", "tqdm",
    "pytest", "hypothesis", "pillow", "pyyaml", "packaging", "filelock", "fsspec", "typing-extensions",
    "transformers", "tokenizers", "sentencepiece", "jinja2", "markupsafe", "sympy", "mpmath", "networkx",
    "attrs", "sortedcontainers", "iniconfig", "pluggy", "pygments", "requests", "urllib3", "idna", "certifi",
    "charset-normalizer", "hf-xet", "httpx", "httpcore", "h11", "anyio", "setuptools", "psutil",
})


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_wheel_list(path: Path = WHEEL_LIST) -> dict[str, str]:
    """{normalized name: version} from `name==version` lines."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if not match:
            raise ValueError(f"{path.name}:{number}: want name==version, got {line!r}")
        pins[normalize(match[1])] = match[2]
    return pins


def wheel_files(wheel_dir: Path) -> dict[str, list[Path]]:
    """{normalized name: wheel files} in a folder (a wheel's name is name-version-tags.whl)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []:
        found.setdefault(normalize(path.name.split("-", 1)[0]), []).append(path)
    return found


def _wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def _fits_gpu_machine(path: Path) -> bool:
    """Pure Python, or built for CPython 3.12 on manylinux x86-64."""
    python_tag, abi_tag, platform_tag = path.name[:-4].split("-")[-3:]
    if platform_tag == "any":
        return True
    return ("cp312" in python_tag or abi_tag == "abi3") and "x86_64" in platform_tag and "linux" in platform_tag


def _wheel_requirements(path: Path) -> list[str]:
    """Requires-Dist of a wheel whose markers hold on the GPU machine (CPython 3.12, Linux x86-64)."""
    import zipfile

    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        text = archive.read(name).decode() if name else ""
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    needs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate(environment):
                needs.append(normalize(requirement.name))
    return needs


def resolve_wheels(pins: dict[str, str], wheel_dir: Path) -> dict:
    """Which pinned wheels are in wheel_dir, which are missing, and what else is wrong there."""
    files = wheel_files(wheel_dir)
    present, missing, problems = {}, [], []
    for name, version in pins.items():
        matching = [f for f in files.get(name, []) if _wheel_version(f) == version]
        if not matching:
            missing.append(f"{name}=={version}")
            continue
        present[name] = str(matching[0].relative_to(REPO) if matching[0].is_relative_to(REPO) else matching[0])
        if not _fits_gpu_machine(matching[0]):
            problems.append(f"{matching[0].name} is not built for CPython 3.12 on manylinux x86-64")
        for need in _wheel_requirements(matching[0]):
            if need not in pins and need not in ON_GPU_IMAGE:
                problems.append(f"{matching[0].name} requires {need}: neither carried (gpu_wheels.txt) "
                                "nor on the GPU machine's image")
    for name, paths in files.items():
        stray = [p.name for p in paths if pins.get(name) != _wheel_version(p)]
        if stray:  # two versions of one package stop the whole install; an unlisted one is dead weight
            problems.append(f"{', '.join(stray)} in {wheel_dir} is not in gpu_wheels.txt: remove it")
    return {"present": present, "missing": missing, "problems": problems}


def install_wheels(pins: dict[str, str], wheel_dir: Path, site: Path, log: Any) -> dict:  # log: gpu_check.Log
    """pip-install (no index, no dependencies) each pinned wheel whose version the machine lacks."""
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    needed = {name: pin for name, pin in pins.items() if version(name) != pin}
    kept = {name: pin for name, pin in pins.items() if name not in needed}
    files = wheel_files(wheel_dir)
    chosen = [next((f for f in files.get(name, []) if _wheel_version(f) == pin), None) for name, pin in needed.items()]
    missing = [f"{name}=={pin}" for (name, pin), f in zip(needed.items(), chosen) if f is None]
    result = {"installed": sorted(needed), "already_there": sorted(kept), "missing": missing, "site": str(site)}
    if missing:
        result["error"] = f"missing wheels in {wheel_dir}: {', '.join(missing)} (fetch them with {FETCH_COMMAND})"
        return result
    if chosen:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--disable-pip-version-check", "--target", str(site), *map(str, chosen)]
        log.note("+ " + " ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            result["error"] = f"pip install failed with status {done.returncode}"
    return result
