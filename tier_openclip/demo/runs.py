"""Running the demo's trainings and evaluations, each kept on disk so a rerun reuses it.

A training run is reused when its folder holds the final checkpoint and the command that made it
(``demo-command.json``) is the one the demo would run now, on the same input files (the training
CSV and, for a fine-tune, the start checkpoint, by size and time); otherwise the folder is
removed and the run starts again (open_clip refuses to write into an existing run). An evaluation is kept
beside its checkpoint (``demo-eval.json``) with the checkpoint's size and time and the
evaluation's settings, and reused while they match.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, TypeVar

import numpy as np

from tier_openclip.data_prep.atomic import write_csv_atomic
from tier_openclip.data_prep.limits import usable_cpus
from tier_openclip.demo.design import MODEL
from tier_openclip.demo.environment import CHILD_THREADS, child_environ
from tier_openclip import openclip_adapter as adapter
from tier_openclip.errors import CommandError
from tier_openclip.evaluation.segmentation import ProbeConfig

COMMAND_FILE, EVAL_FILE, MAPS_FILE = "demo-command.json", "demo-eval.json", "demo-maps.json"
# The linear segmentation probe of every checkpoint (label fraction 1.0, one seed): a short
# schedule, ~7 s per checkpoint of TIER-tiny on the small preset on the shared 2-core VM.
SEG_PROBE = ProbeConfig(epochs=10, lr=3e-2, batch_size=32)
SEG_TRAIN_IMAGES = 1000  # the probe's labelled images: the phantom's first 1000 train samples


def write_training_csv(data: dict, out_dir: Path) -> Path:
    """The train shards as open_clip's CSV layout (image files + a table read with
    adapter.csv_dataset_flags()), which its loader shuffles reproducibly from --seed. Captions are
    folded onto one line (a tab or newline would break the table). Rewritten only when the shards changed."""
    import webdataset as wds

    shards_dir = Path(data["train_shards"]).parent
    stamp = {"train_shards": data["train_shards"], "num_train": data["num_train"],
             "files": [_file_id(path) for path in sorted(shards_dir.glob("*.tar"))]}
    table, stamp_path = out_dir / "train.csv", out_dir / "stamp.json"
    if table.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return table
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)
    rows = []
    for sample in wds.WebDataset(data["train_shards"], shardshuffle=False):
        image = out_dir / "images" / f"{sample['__key__']}.png"
        image.write_bytes(sample["png"])
        rows.append([str(image.resolve()), " ".join(sample["txt"].decode("utf-8").split())])
    if len(rows) != data["num_train"]:
        raise CommandError(f"{data['train_shards']}: {len(rows)} samples, expected {data['num_train']}")
    write_csv_atomic(table, [adapter.TRAIN_CSV_IMAGE_KEY, adapter.TRAIN_CSV_CAPTION_KEY], rows,
                     delimiter=adapter.TRAIN_CSV_SEPARATOR, lineterminator="\n")
    stamp_path.write_text(json.dumps(stamp))
    return table


def final_checkpoint(run_dir: Path, epochs: int) -> Path:
    return run_dir / "checkpoints" / f"epoch_{epochs}.pt"


def run_training(command: list[str], run_dir: Path, epochs: int, steps: int, inputs: list[Path],
                 progress=None, pins: Mapping[str, str] | None = None) -> dict:
    """Run (or reuse) one training that reads ``inputs``, with the environment variables ``pins``
    set (environment.PINS: one code path on every CPU); returns its checkpoint path and timings."""
    checkpoint = final_checkpoint(run_dir, epochs)
    stamp = run_dir / COMMAND_FILE
    log_path = run_dir.parent / f"{run_dir.name}.stdout.log"
    made_by = {"command": command[1:], "inputs": [_file_id(path) for path in inputs], "pins": dict(pins or {}),
               "threads": CHILD_THREADS}
    if checkpoint.is_file() and stamp.is_file() and _made_by(json.loads(stamp.read_text())) == made_by:
        if progress is not None:
            progress.update(steps)
        timing = json.loads(stamp.read_text())["timing"]
        return {"checkpoint": str(checkpoint), "reused": True, **timing}
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log_path, "w") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=child_environ(pins)
    ) as process:
        for line in process.stdout:
            log.write(line)
            if progress is not None and adapter.is_train_step_line(line):
                progress.update(1)
    wall = time.time() - started
    if process.returncode != 0 or not checkpoint.is_file():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-5:]).strip()
        raise CommandError(f"training {run_dir.name} failed (exit status {process.returncode}); the end of its log, "
                           f"{log_path}:\n{tail}")
    try:  # open_clip's 'Batch (t)' per step (the commands set --log-every-n-steps 1)
        step_times = adapter.parse_step_times(log_path.read_text())
    except adapter.OpenClipIncompatible as exc:
        raise CommandError(f"training {run_dir.name}: {exc}") from None
    timing = {"wall_seconds": wall, "steps": len(step_times), "step_seconds": float(np.sum(step_times)),
              "mean_step_seconds": float(np.mean(step_times)) if step_times else None,
              # imports, model creation, data set-up, checkpoint writing: all but the steps themselves
              "overhead_seconds": wall - float(np.sum(step_times))}
    stamp.write_text(json.dumps({**made_by, "timing": timing}, indent=1))
    return {"checkpoint": str(checkpoint), "reused": False, **timing}


def _made_by(saved: dict) -> dict:
    return {"command": saved.get("command"), "inputs": saved.get("inputs"), "pins": saved.get("pins", {}),
            "threads": saved.get("threads")}


def _file_id(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def evaluate_checkpoint(checkpoint: Path, data: dict, bootstrap: int) -> dict:
    """Zero-shot AUC, phrase grounding, the linear segmentation probe, token↔patch statistics and
    the local collapse measure of one checkpoint (cached)."""
    from dataclasses import asdict

    sets = [Path(data["eval_dir"]) / "labels.csv", Path(data["grounding_dir"]) / "boxes.csv",
            Path(data["seg_dir"]) / "splits.csv", Path(data["seg_dir"]) / "meta.json"]
    settings = {"checkpoint": _file_id(checkpoint), "bootstrap": bootstrap, "sets": [_file_id(p) for p in sets],
                "probe": asdict(SEG_PROBE), "version": 4}
    cache = checkpoint.parent.parent / EVAL_FILE
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == settings:
            return saved["result"]
    from tier_openclip.demo.collapse import local_cosines
    from tier_openclip.evaluation.analyze import accumulate_similarity_stats, shard_batches
    from tier_openclip.evaluation.grounding import grounding_evaluate
    from tier_openclip.evaluation.segmentation import segmentation_evaluate
    from tier_openclip.evaluation.zeroshot import zeroshot_evaluate
    from tier_openclip.models import load_model

    started = time.time()
    loaded = load_model(MODEL, str(checkpoint))
    # The phantom's own prompt file: the captions' words (phantom.reports.prompt_set).
    zeroshot = zeroshot_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, data["eval_dir"],
                                 prompts=Path(data["eval_dir"]) / "prompts.json", bootstrap=bootstrap, seed=0)
    # Every phrase map: "tokens" (mean over the phrase's token maps: what TIER regularises), "pooled"
    # (the phrase's own embedding, cosine per patch: BioViL's way on MS-CXR) and "cam" (the same
    # against the unnormalised patches: for this mean-pooled tower, each patch's share of the score
    # CLIP's loss trains).
    grounding, grounding_pooled, grounding_cam = (
        grounding_evaluate(loaded.model, loaded.preprocess, loaded.tokenizer, data["grounding_dir"],
                           phrase_mode=mode, bootstrap=bootstrap, seed=0) for mode in ("tokens", "pooled", "cam"))
    for entry in (grounding, grounding_pooled, grounding_cam):
        entry.pop("phrases", None)  # per-phrase rows: too many to keep for every run
    seg_started = time.time()
    with _torch_threads(1):  # the probe's many small steps: thread contention costs more than it gains
        segmentation = segmentation_evaluate(loaded.model, loaded.preprocess, data["seg_dir"], label_fraction=1.0,
                                             seeds=1, seed=0, config=SEG_PROBE, bootstrap=bootstrap)
    segmentation["seconds"] = time.time() - seg_started
    batches = list(shard_batches(data["test_shards"], loaded.preprocess, loaded.tokenizer, data["num_test"]))
    similarity = accumulate_similarity_stats(loaded.model, batches).summary()
    result = {"checkpoint": str(checkpoint), "zeroshot": zeroshot, "grounding": grounding,
              "grounding_pooled": grounding_pooled, "grounding_cam": grounding_cam,
              "segmentation": segmentation, "similarity": similarity,
              "local_cosine": local_cosines(loaded.model, loaded.tokenizer, batches),
              "eval_seconds": time.time() - started}
    cache.write_text(json.dumps({"settings": settings, "result": result}))
    return result


def ratio_key(scale: str, tier_lambda: float) -> str:
    return f"{scale}|{tier_lambda:g}"


def checkpoint_diagnostics(checkpoint: Path, data: dict, map_scales: list[str], ratios: list[dict]) -> dict:
    """{"maps": scale -> manipulation.map_stats on the test pairs, "ratios": ratio_key -> 
    manipulation.gradient_ratio on the first training batches, for each {"scale", "lambda"} of
    ``ratios``}; each cached (``demo-maps.json`` beside the checkpoint) while the checkpoint and
    the data are unchanged."""
    from tier_openclip.demo import manipulation

    cache = checkpoint.parent.parent / MAPS_FILE
    stamp = {"checkpoint": _file_id(checkpoint), "test": data["test_shards"], "train": data["train_shards"],
             "top_k": manipulation.TOP_K, "batches": manipulation.RATIO_BATCHES, "version": 1}
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if saved.get("stamp") != stamp:
        saved = {"stamp": stamp, "maps": {}, "ratios": {}}
    missing = [scale for scale in map_scales if scale not in saved["maps"]]
    missing_ratios = [r for r in ratios if ratio_key(r["scale"], r["lambda"]) not in saved["ratios"]]
    if missing or missing_ratios:
        from tier_openclip.evaluation.analyze import shard_batches
        from tier_openclip.models import load_model

        loaded = load_model(MODEL, str(checkpoint))
        if missing:
            batches = shard_batches(data["test_shards"], loaded.preprocess, loaded.tokenizer, data["num_test"])
            saved["maps"].update(manipulation.map_stats(loaded.model, batches, missing))
        for ratio in missing_ratios:
            batches = shard_batches(data["train_shards"], loaded.preprocess, loaded.tokenizer,
                                    manipulation.RATIO_BATCHES * 32)
            saved["ratios"][ratio_key(ratio["scale"], ratio["lambda"])] = manipulation.gradient_ratio(
                loaded.model, batches, ratio["scale"], ratio["lambda"])
        cache.write_text(json.dumps(saved))
    return {"maps": {scale: saved["maps"][scale] for scale in map_scales},
            "ratios": {key: saved["ratios"][key] for key in (ratio_key(r["scale"], r["lambda"]) for r in ratios)}}


def evaluate_in_worker(items: list[dict], data: dict, bootstrap: int, pins: Mapping[str, str] | None,
                       work_dir: Path) -> dict:
    """worker.run_job in a child process with ``pins`` set: {"process", "results"} (worker.py)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        job, out = Path(scratch) / "job.json", Path(scratch) / "out.json"
        job.write_text(json.dumps({"data": {k: v for k, v in data.items() if k != "prompts"}, "bootstrap": bootstrap,
                                   "items": items}))
        done = subprocess.run([sys.executable, "-m", "tier_openclip.demo.worker", str(job), str(out)],
                              env=child_environ(pins), capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise CommandError(f"evaluating {len(items)} checkpoints failed (exit status {done.returncode}):\n{tail}")
        return json.loads(out.read_text())


def evaluate_in_workers(items: list[dict], data: dict, bootstrap: int, pins: Mapping[str, str] | None,
                        work_dir: Path) -> dict:
    """evaluate_in_worker over consecutive slices of ``items``, run concurrently; the results in the
    items' order, the first worker's "process"."""
    slices = [list(part) for part in np.array_split(np.arange(len(items)), concurrency(len(items))) if len(part)]
    done = run_concurrently([lambda part=part: evaluate_in_worker([items[i] for i in part], data, bootstrap, pins, work_dir)
                             for part in slices])
    return {"process": done[0]["process"], "results": [result for part in done for result in part["results"]]}


def concurrency(runs: int) -> int:
    """How many one-thread child processes (environment.CHILD_THREADS) run at once: all of a stage's
    runs up to twice the usable cores. Three starts on 2 cores all at once finish together; two at
    a time would leave a core idle while the third runs alone."""
    return max(1, min(runs, 2 * usable_cpus()))


T = TypeVar("T")


def run_concurrently(jobs: list[Callable[[], T]]) -> list[T]:
    """Every job in a thread (each starts and waits for its child process), ``concurrency`` at a time;
    their results in order. The first failure is raised once the jobs already started have ended;
    jobs not yet started are dropped."""
    with ThreadPoolExecutor(concurrency(len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


@contextlib.contextmanager
def _torch_threads(count: int):
    """torch's intra-op threads set to ``count`` inside, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
