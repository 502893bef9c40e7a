"""WebDataset shards: planning, writing, verification and resumption.

Layout of one split, ``OUT/<split>/``::

    <split>-000000.tar ...    finished shards (webdataset's TarWriter, plain tar)
    sizes.json                shard basename -> samples, read by open_clip's get_dataset_size
    .<split>-000003.tar.partial   the shard being written (only while a run is alive)

and ``OUT/.prep-state/<split>-000000.json``: one record per finished shard (its plan digest,
the keys written, the samples that failed with their reasons, the handled-condition notes, its
size and SHA-256); ``OUT/.prep-state/<split>-000003.writing`` while its ``.partial`` exists.

Plan. A split's samples are in a fixed order (see mimic.py); shard ``k`` holds samples
``[k * shard_size, (k + 1) * shard_size)`` of that order minus the ones that fail to render, so
the plan is a pure function of the eligible sample list and ``--shard-size``: a resumed run
recomputes the same plan. Each shard's plan digest covers its samples' inputs and the render
options.

Writing. A shard is written to its ``.partial`` name with ``wds.TarWriter``, flushed and
fsync'ed; then its
record is written (atomically); then the tar is renamed to its final name. A final name
therefore always holds a complete tar with a record; a run killed at any point, even SIGKILL in
the middle of a shard, leaves at most a ``.partial`` that the next run deletes.

Byte-identical output. webdataset 0.2's TarWriter stamps every member with ``time.time()``
unless given ``mtime=``, names its owner ``bigdata`` and leaves uid/gid at tarfile's 0; it
writes a sample's members sorted by extension. Here mtime is 0, owner and group are
``tier-openclip``, the mode 0444, the stream an uncompressed USTAR tar, and every member's bytes
are made by the workers from the inputs alone (JPEG/PNG encoders write no timestamps); results
are consumed in input order whatever the number of workers.

Resumption. Before writing, every planned shard with a final tar is verified: its record must
carry the current plan digest, its size and SHA-256 must match the record, and reading it back
with ``tarfile`` must give exactly the recorded keys, each with its members. Verified shards
are kept as they are, unless their record lists samples that failed as ``worker_crashed`` (the
worker died or timed out, which says nothing about the sample): such a shard is rendered again,
so those samples are retried and the others come out byte for byte as before. Anything else is
rewritten. Shards of an older plan beyond the current
one are removed, so ``sizes.json`` and the directory agree.

Never deleting what this tool did not write: a file is removed or replaced only when a record
in ``.prep-state/`` says this tool wrote it (a shard: its record, with the same size and
SHA-256 for a shard beyond the plan; a ``.partial``: its ``.writing`` marker). A planned shard
name held by a file without a record stops the run with a message; an unplanned one is left
where it is. Every member name is ``<key>.<extension>`` with a key of ``[A-Za-z0-9_-]`` only
(``paths.safe_key``), so no member can extract outside its folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .atomic import write_json_atomic
from .errors import PrepError
from .paths import is_safe_key

STATE_DIR = ".prep-state"
SIZES_FILE = "sizes.json"
PARTIAL_SUFFIX = ".partial"
WRITING_SUFFIX = ".writing"  # marker in STATE_DIR: this run created the shard's .partial
# Fixed tar header fields: no time, no user of this machine ends up in a shard.
TAR_MTIME = 0
TAR_USER = TAR_GROUP = "tier-openclip"
TAR_MODE = 0o444

T = TypeVar("T")
R = TypeVar("R")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def shard_urls(split: str, count: int) -> str:
    """The brace pattern open_clip's ``--train-data`` takes, relative to OUT."""
    if count == 0:
        return ""
    if count == 1:
        return f"{split}/{shard_name(split, 0)}"
    return f"{split}/{split}-{{{0:06d}..{count - 1:06d}}}.tar"


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    tasks: tuple  # the samples, in order (objects with a .key)
    digest: str

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def plan_shards(
    split: str, tasks: Sequence[T], shard_size: int, digest: Callable[[Sequence[T]], str]
) -> list[ShardPlan]:
    """Cut ``tasks`` (already in their final order) into consecutive shards of ``shard_size``."""
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    chunks = [tuple(tasks[start : start + shard_size]) for start in range(0, len(tasks), shard_size)]
    return [ShardPlan(split, index, chunk, digest(chunk)) for index, chunk in enumerate(chunks)]


@dataclass
class ShardRecord:
    name: str
    digest: str  # the plan digest this shard was written for
    keys: list[str]  # keys written, in order
    extensions: list[str]  # member extensions of every sample, sorted
    size: int = 0
    sha256: str = ""
    # [key, reason, detail] of the planned samples that failed to render
    failures: list[list[str]] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> ShardRecord | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(functools.partial(handle.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shard(path: Path, record: ShardRecord | None, plan: ShardPlan) -> str | None:
    """Why the finished shard at ``path`` cannot be kept, or None when it is good."""
    if not path.is_file():
        return "missing"
    if record is None:
        return "no record of it"
    if record.digest != plan.digest:
        return "made from other inputs or options"
    if path.stat().st_size != record.size or file_sha256(path) != record.sha256:
        return "its bytes differ from the record"
    expected = [f"{key}.{ext}" for key in record.keys for ext in record.extensions]
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as error:
        return f"unreadable tar ({error})"
    if [m.name for m in members] != expected or not all(m.isfile() for m in members):
        return "its members differ from the record"
    planned = {task.key for task in plan.tasks}
    if not set(record.keys) <= planned:
        return "it holds keys the plan does not"
    return None


class ShardFile:
    """One shard being written under its ``.partial`` name (see the module docstring)."""

    def __init__(self, split_dir: Path, state_dir: Path, plan: ShardPlan) -> None:
        import webdataset as wds

        self.plan = plan
        self.path = split_dir / plan.name
        self.partial = split_dir / f".{plan.name}{PARTIAL_SUFFIX}"
        self.record_path = state_dir / f"{Path(plan.name).stem}.json"
        self.marker = state_dir / f"{Path(plan.name).stem}{WRITING_SUFFIX}"
        self.record = ShardRecord(plan.name, plan.digest, [], [])
        self.marker.touch()  # before the partial exists: a rerun may then remove the partial
        self.handle = open(self.partial, "wb")
        self.writer = wds.TarWriter(
            self.handle, user=TAR_USER, group=TAR_GROUP, mode=TAR_MODE, mtime=TAR_MTIME, encoder=False
        )

    def write(self, key: str, files: dict[str, bytes]) -> None:
        if not is_safe_key(key) or not all(is_safe_key(ext.replace(".", "_")) for ext in files):
            raise ValueError(f"unsafe sample key or extension {key!r} {sorted(files)}: keys come from paths.safe_key")
        extensions = sorted(files)
        if not self.record.extensions:
            self.record.extensions = extensions
        elif extensions != self.record.extensions:
            raise ValueError(f"sample {key} has members {extensions}, the shard has {self.record.extensions}")
        self.writer.write({"__key__": key, **files})
        self.record.keys.append(key)

    def flush(self) -> None:
        """Push what the file object holds to the OS (tarfile's stream keeps up to one 10 KiB
        record of its own, so the file on disk then ends mid-tar, as after a crash)."""
        self.handle.flush()

    def fail(self, key: str, reason: str, detail: str) -> None:
        self.record.failures.append([key, reason, detail])

    def finish(self) -> ShardRecord:
        self.writer.close()
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        self.record.size = self.partial.stat().st_size
        self.record.sha256 = file_sha256(self.partial)
        self.record.save(self.record_path)
        os.replace(self.partial, self.path)
        _fsync_dir(self.path.parent)
        self.marker.unlink(missing_ok=True)
        return self.record

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        with contextlib.suppress(Exception):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()
        self.marker.unlink(missing_ok=True)


# Failure reason of a sample whose worker process died or hung (see OrderedPool).
WORKER_LOST = "worker_crashed"
DEFAULT_SAMPLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class Lost:
    """Stands in for the result of ``item`` when its worker died or hung."""

    item: Any
    timeout: float

    @property
    def detail(self) -> str:
        return (f"no result within {self.timeout:g} s: the worker process died on this file (e.g. a crash in "
                "a native decoder) or hung; the run went on with a fresh pool")  # fmt: skip


class OrderedPool:
    """``map(function, items)`` in order over ``workers`` processes (``multiprocessing.Pool``
    ``imap``), robust to a worker that dies: when the next result in order does not arrive
    within ``timeout`` seconds, that item yields :class:`Lost`, the pool is replaced and the
    items after it are submitted again. ``workers=0`` runs in this process (no isolation).
    ``context``: the multiprocessing context that starts the workers (default: the platform's
    default start method); e.g. ``multiprocessing.get_context("spawn")`` for a caller that may
    hold threads (torch, OpenMP) which a fork can deadlock.

    Use as a context manager, entered before starting threads (progress bars): the pool's
    processes are started on entry.
    """

    def __init__(self, function: Callable[[T], R], items: Sequence[T], workers: int,
                 timeout: float | None = DEFAULT_SAMPLE_TIMEOUT,
                 context: multiprocessing.context.BaseContext | None = None) -> None:  # fmt: skip
        self.function, self.items, self.workers, self.timeout = function, items, workers, timeout
        self.context = context
        self.pool = None

    def _start(self) -> None:
        if self.workers > 0 and self.items:
            self.pool = (self.context or multiprocessing.get_context()).Pool(self.workers)

    def _stop(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> OrderedPool:
        self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop()

    def __iter__(self) -> Iterator[R | Lost]:
        if self.workers <= 0:
            yield from map(self.function, self.items)
            return
        position = 0
        while position < len(self.items):
            if self.pool is None:
                self._start()
            assert self.pool is not None
            # chunksize 1: imap then returns an IMapIterator, whose next() takes a timeout (with
            # larger chunks it is a plain generator); a sample costs far more than its IPC.
            results = self.pool.imap(self.function, self.items[position:], chunksize=1)
            while position < len(self.items):
                try:
                    result = results.next(self.timeout)
                except multiprocessing.TimeoutError:
                    lost = Lost(self.items[position], float(self.timeout or 0))
                    position += 1
                    self._stop()
                    yield lost
                    break
                position += 1
                yield result


@contextlib.contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    """Exclusive lock on OUT for the duration of a run (released by the OS if the run dies)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrepError(
                f"another prep run is writing to {state_dir.parent}: wait for it to finish or use another --out"
            ) from None
        yield


_SHARD_FILE = re.compile(r"^(?P<split>.+)-(?P<index>\d{6})\.tar$")


def refuse_foreign_out(out: Path) -> None:
    """PrepError unless ``out`` is new, empty, or an earlier prep run's (it has STATE_DIR):
    a run overwrites manifest.json, sizes.json, ... in its --out, which must therefore be its own."""
    if out.exists() and not out.is_dir():
        raise PrepError(f"--out {out} is a file, not a folder: choose a new or empty folder")
    if out.is_dir() and not (out / STATE_DIR).is_dir() and any(out.iterdir()):
        raise PrepError(
            f"--out {out} is not empty and was not written by tier-openclip prep (it has no {STATE_DIR}/): "
            "prep writes and removes files in its --out, so choose a new or empty folder"
        )


def _recorded(path: Path, state_dir: Path) -> bool:
    """Whether a record says this tool wrote the shard at ``path`` with exactly these bytes."""
    record = ShardRecord.load(state_dir / f"{path.stem}.json")
    return (record is not None and record.name == path.name and path.stat().st_size == record.size
            and file_sha256(path) == record.sha256)  # fmt: skip


def prepare_split_dir(split_dir: Path, state_dir: Path, split: str, plans: Sequence[ShardPlan], log: Callable[[str], None]) -> None:
    """Delete this tool's ``.partial`` leftovers and its shards that the current plan lacks
    (only files its records say it wrote; anything else is left where it is)."""
    split_dir.mkdir(parents=True, exist_ok=True)
    planned = {plan.name for plan in plans}
    for path in sorted(split_dir.iterdir()):
        if path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX):
            marker = state_dir / f"{Path(path.name[1 : -len(PARTIAL_SUFFIX)]).stem}{WRITING_SUFFIX}"
            if marker.is_file():
                path.unlink()
                marker.unlink()
                log(f"removed the unfinished {path.name} of an interrupted run")
            continue
        match = _SHARD_FILE.match(path.name)
        if match and match.group("split") == split and path.name not in planned:
            if not _recorded(path, state_dir):
                log(f"left {path.name} in place: no record says this tool wrote it (it is not in sizes.json)")
                continue
            path.unlink()
            (state_dir / f"{path.stem}.json").unlink(missing_ok=True)
            log(f"removed {path.name}: the current inputs plan fewer shards")
    for marker in state_dir.glob(f"{split}-*{WRITING_SUFFIX}"):  # a run killed before its partial existed
        if not (split_dir / f".{marker.stem}.tar{PARTIAL_SUFFIX}").exists():
            marker.unlink()


def write_shards(
    out_dir: Path,
    plans: Sequence[ShardPlan],
    render: Callable[[Any], Any],
    *,
    workers: int,
    progress: bool,
    log: Callable[[str], None],
    sample_timeout: float | None = DEFAULT_SAMPLE_TIMEOUT,
    context: multiprocessing.context.BaseContext | None = None,
) -> dict[str, ShardRecord]:
    """Write every planned shard that is not already finished and verified; return the records
    of all planned shards by name.

    ``render(task)`` must be picklable and return an object with ``key``, ``files`` (extension
    -> bytes, or None when the sample failed), ``reason``, ``detail`` and ``notes``. It runs in
    ``workers`` processes (0: in this process); a sample whose worker dies or exceeds
    ``sample_timeout`` seconds fails with reason ``worker_crashed``. ``context``: see
    :class:`OrderedPool`.
    """
    from tqdm import tqdm

    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, ShardRecord] = {}
    pending: list[ShardPlan] = []
    for split in dict.fromkeys(plan.split for plan in plans):
        prepare_split_dir(out_dir / split, state_dir, split, [p for p in plans if p.split == split], log)
    for plan in plans:
        path = out_dir / plan.split / plan.name
        record = ShardRecord.load(state_dir / f"{path.stem}.json")
        problem = verify_shard(path, record, plan)
        if problem is None:
            assert record is not None
            crashed = sum(1 for failure in record.failures if failure[1] == WORKER_LOST)
            if not crashed:
                records[plan.name] = record
                continue
            # A dead or hung worker says nothing about the sample: render the shard again (its other
            # samples come out byte for byte as before). The finished shard stays until replaced.
            log(f"rewriting {plan.split}/{plan.name}: retrying {crashed} sample(s) whose worker crashed or timed out")
            pending.append(plan)
            continue
        if problem == "no record of it":
            raise PrepError(
                f"{path} exists but no record in {state_dir} says tier-openclip prep wrote it: "
                "move it away (or choose another --out) and run again"
            )
        if problem != "missing":
            log(f"rewriting {plan.split}/{plan.name}: {problem}")
            path.unlink(missing_ok=True)
        pending.append(plan)
    total = sum(len(plan.tasks) for plan in plans)
    done = total - sum(len(plan.tasks) for plan in pending)
    if done:
        log(f"{len(records)} finished shard(s) verified and kept ({done} planned samples)")
    tasks = [task for plan in pending for task in plan.tasks]
    with OrderedPool(render, tasks, workers, sample_timeout, context) as pool:
        results = iter(pool)
        bar = tqdm(total=total, initial=done, unit="img", desc="prep", smoothing=0.05, disable=not progress,
                   dynamic_ncols=True)  # fmt: skip
        try:
            for plan in pending:
                shard = ShardFile(out_dir / plan.split, state_dir, plan)
                notes: Counter = Counter()
                try:
                    for task in plan.tasks:
                        result = next(results)
                        if isinstance(result, Lost):
                            shard.fail(task.key, WORKER_LOST, result.detail)
                        elif result.key != task.key:  # ordered map: cannot happen
                            raise RuntimeError(f"result for {result.key} arrived in place of {task.key}")
                        elif result.files is None:
                            shard.fail(result.key, result.reason, result.detail)
                        else:
                            shard.write(result.key, result.files)
                        if not isinstance(result, Lost):
                            notes.update(result.notes)
                        bar.update(1)
                    shard.record.notes = dict(sorted(notes.items()))
                    records[plan.name] = shard.finish()
                except BaseException:
                    shard.abort()
                    raise
        finally:
            bar.close()
    return records


def write_sizes(split_dir: Path, plans: Iterable[ShardPlan], records: dict[str, ShardRecord]) -> dict[str, int]:
    """``sizes.json``: shard basename -> samples written, as open_clip reads it."""
    sizes = {plan.name: len(records[plan.name].keys) for plan in plans}
    split_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(split_dir / SIZES_FILE, sizes)
    return sizes
