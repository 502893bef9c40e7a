"""benchmarks/gpu_check.py's machinery, apart from its plan: the log, a part run under a time
limit, pytest's junit report as JSON, and what a lent GPU machine takes along and gives back.
Standard library only: it runs on a bare GPU machine before any wheel is installed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_wheels.py beside it, however this is loaded
from gpu_wheels import REPO  # noqa: E402

# What a GPU machine takes along and gives back.
MAX_TREE_BYTES = 64 * 2**20
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 2**20
MAX_DEPTH = 2  # OUT/a/b/file comes back, OUT/a/b/c/file does not
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


class Log:
    """Everything printed goes to the console and to gpu_check.log."""

    def __init__(self, path: Path):
        self.file = path.open("a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.file.write(text)
            self.file.flush()

    def note(self, line: str) -> None:
        self.write(f"[gpu_check {time.strftime('%H:%M:%S')}] {line}\n")

    def close(self) -> None:
        self.file.close()


def run_limited(command: list[str], limit_s: float, log: Log, env: dict, grace_s: float) -> tuple[int | None, str, float]:
    """Run command in its own process group; at limit SIGINT, grace_s later SIGKILL, the whole group.
    Returns (exit status, 'ok' | 'failed' | 'timeout', seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: [log.write(line) for line in proc.stdout], daemon=True)
    reader.start()
    status = None
    try:
        proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        status = "timeout"
        log.note(f"time limit of {limit_s:.0f} s reached: SIGINT")
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.note(f"still running {grace_s:g} s later: SIGKILL")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    if status is None:
        status = "ok" if proc.returncode == 0 else "failed"
    return proc.returncode, status, round(time.monotonic() - start, 1)


def junit_report(path: Path) -> dict:
    """tests.json's figures from pytest's junit XML (xunit1, so record_property's values are there)."""
    if not path.is_file():
        return {"tests": [], "counts": None}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], node.get("message")
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"id": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": (message or "")[:1000] or None,
                      "figures": properties})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"tests": tests, "counts": counts}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")




def layout_problems(out: Path) -> list[str]:
    """What in out would not come back from a GPU machine: too many files, odd names, too deep,
    too large."""
    problems = []
    files = sorted(p for p in out.rglob("*") if not p.is_dir())
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files, at most {MAX_FILES} come back")
    for path in files:
        rel = path.relative_to(out)
        if len(rel.parts) > MAX_DEPTH + 1:
            problems.append(f"{rel}: more than {MAX_DEPTH} folders down")
        if not all(NAME_OK.match(part) for part in rel.parts):
            problems.append(f"{rel}: names take letters, digits, '.', '_' and '-' only")
        if path.is_symlink() or not path.is_file():
            problems.append(f"{rel}: not a plain file")
        elif path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel}: {path.stat().st_size / 2**20:.1f} MiB, at most {MAX_FILE_BYTES // 2**20} MiB")
    total = sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())
    if total > MAX_TREE_BYTES:
        problems.append(f"{total / 2**20:.1f} MiB in all, at most {MAX_TREE_BYTES // 2**20} MiB")
    return problems


def travelling_bytes(wheel_dir: Path) -> tuple[int | None, int]:
    """(bytes of the working tree git would send: tracked and untracked-not-ignored files, or None
    without git), bytes of the wheels, which travel as a carried ignored folder."""
    wheels = sum(p.stat().st_size for p in wheel_dir.rglob("*") if p.is_file()) if wheel_dir.is_dir() else 0
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, timeout=60, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        return None, wheels
    tree = sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())
    return tree, wheels
