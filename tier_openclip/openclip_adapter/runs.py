"""open_clip_train's behaviour that tier-openclip relies on: how a training run counts its steps,
the files it reads and writes (a CSV training table, params.txt, checkpoints, results.jsonl) and what it
logs (its step lines). Part of the adapter
(tier_openclip.openclip_adapter re-exports every name); each assumption has a test in
tests/test_openclip_adapter.py that fails when open_clip changes it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tier_openclip import openclip_adapter as _adapter  # symbol(), looked up when called


# --- open_clip's behaviour the plugin relies on (each assumption has a test in
# tests/test_openclip_adapter.py that fails when open_clip changes it) ---------------------------

# open_clip_train.train.train_one_epoch's parameters: the plugin's wrapper has the same ones and
# passes them on by position.
TRAIN_ONE_EPOCH_PARAMS = ("model", "data", "loss", "epoch", "optimizer", "scaler", "scheduler", "dist_model", "args",
                          "tb_writer")


def train_batches(data: Mapping[str, Any]) -> int:
    """Batches in one training epoch: open_clip_train's data["train"] is a DataInfo whose
    dataloader carries num_batches (set by its get_*_dataset functions)."""
    return data["train"].dataloader.num_batches


def steps_per_epoch(data: Mapping[str, Any], args: Any) -> int:
    """Optimizer steps in one epoch, as open_clip_train counts them (main.py's scheduler and
    train_one_epoch): batches over --accum-freq."""
    return train_batches(data) // args.accum_freq


def total_steps(data: Mapping[str, Any], args: Any) -> int:
    """The run's optimizer steps, the ``total_steps`` open_clip_train/main.py gives its LR scheduler."""
    return steps_per_epoch(data, args) * args.epochs


# open_clip_train/main.py writes logs/NAME/params.txt as one "name: value" line per argument,
# values as str() prints them, in sorted order.
PARAMS_TXT = "params.txt"


def params_txt_line(name: str, value: Any) -> str:
    """The line open_clip_train/main.py writes for one argument (without its newline)."""
    return f"{name}: {value}"


def read_params_txt(path: str | Any) -> dict[str, Any]:
    """A run's params.txt as a dict, values parsed back as Python literals where they are ones."""
    import ast
    from pathlib import Path

    params: dict[str, Any] = {}
    for line in Path(path).read_text().splitlines():
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            params[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name.strip()] = value  # plain strings (model names, paths, "tier") are not quoted
    return params


def params_txt_next_to(checkpoint: str | Any) -> Any:
    """logs/NAME/params.txt for open_clip_train's logs/NAME/checkpoints/epoch_N.pt, if it exists (a Path or None)."""
    from pathlib import Path

    path = Path(checkpoint).resolve().parent.parent / PARAMS_TXT
    return path if path.is_file() else None


# params.txt names -> create_model_and_transforms arguments (what open_clip_train/main.py passes).
CREATE_ARGS = ("force_quick_gelu", "force_custom_text", "force_image_size", "force_context_length",
               "image_mean", "image_std", "image_interpolation", "image_resize_mode")
# A pretrained tag's preprocess config keys -> the create_model_and_transforms arguments they set.
TAG_PREPROCESS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                  "resize_mode": "image_resize_mode"}


def create_args_from_params(model_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """create_model_and_transforms arguments that rebuild the model as open_clip_train/main.py
    built it from these (params.txt) arguments."""
    import math
    import os

    kwargs = {name: params[name] for name in CREATE_ARGS if params.get(name) not in (None, False)}
    tag = params.get("pretrained")
    if isinstance(tag, str) and tag and not os.path.isfile(tag):  # an open_clip tag: its normalisation
        tag_cfg = _adapter.symbol("get_pretrained_cfg")(model_name, tag) or {}
        for key, arg in TAG_PREPROCESS.items():
            if key in tag_cfg and arg not in kwargs:
                kwargs[arg] = tag_cfg[key]
    if params.get("siglip"):  # as open_clip_train/main.py: SigLIP models carry a logit bias
        kwargs.update(init_logit_scale=math.log(10), init_logit_bias=-10)
    return kwargs


# open_clip_train's checkpoint files: a dict with the weights under "state_dict" (and "epoch",
# the number of completed epochs); open_clip's load_checkpoint also takes a bare state dict.
CHECKPOINT_WEIGHTS_KEY = "state_dict"
CHECKPOINT_EPOCH_KEY = "epoch"


def checkpoint_weights(saved: Any) -> Any:
    """The state dict inside what a checkpoint file holds (a training checkpoint or bare weights)."""
    return saved.get(CHECKPOINT_WEIGHTS_KEY, saved) if isinstance(saved, Mapping) else None


def resume_weights(saved: Any) -> Any:
    """The state dict open_clip_train/main.py's --resume loads: a checkpoint with an "epoch" is a
    training checkpoint (weights under "state_dict"), anything else bare weights."""
    return saved[CHECKPOINT_WEIGHTS_KEY] if isinstance(saved, Mapping) and CHECKPOINT_EPOCH_KEY in saved else saved


def checkpoint_epoch(saved: Any) -> int | None:
    """The completed epochs a training checkpoint records, or None (bare weights)."""
    epoch = saved.get(CHECKPOINT_EPOCH_KEY) if isinstance(saved, Mapping) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


# Where open_clip_train writes its evaluation figures: one JSON object a line, appended, in
# logs/NAME/checkpoints/ (args.checkpoint_path), only when --save-logs is on.
RESULTS_JSONL = "results.jsonl"


def results_jsonl_path(args: Any) -> str | None:
    """checkpoints/results.jsonl of this run, or None when the run writes no logs."""
    import os

    if getattr(args, "save_logs", True) and getattr(args, "checkpoint_path", None):
        return os.path.join(args.checkpoint_path, RESULTS_JSONL)
    return None


# What open_clip's create_model logs when it builds a model without weights: true, and alarming,
# for a model whose weights are loaded right after (push, evaluation of a checkpoint).
NO_WEIGHTS_MESSAGE = "No pretrained weights loaded for model"


class _DropNoWeightsMessage:
    def filter(self, record: Any) -> bool:
        return NO_WEIGHTS_MESSAGE not in record.getMessage()


def create_bare_model(model_name: str, **kwargs: Any) -> tuple[Any, Any, Any]:
    """create_model_and_transforms for a model whose weights the caller loads next: no base weight
    downloads, and without open_clip's "No pretrained weights loaded ... initialized randomly"."""
    import logging

    quiet = _DropNoWeightsMessage()
    root = logging.getLogger()  # open_clip logs with logging.warning, on the root logger
    root.addFilter(quiet)
    try:
        return _adapter.symbol("create_model_and_transforms")(
            model_name, load_weights=False, pretrained_text=False, pretrained_image=False, **kwargs)
    finally:
        root.removeFilter(quiet)


# open_clip_train's setup_logging sets EVERY logger that exists at that moment to the run's level
# (INFO), torch's internal ones included, so the atexit handlers of torch._dynamo.utils
# ("TorchDynamo compilation metrics") and torch._subclasses.fake_tensor ("FakeTensor cache stats")
# end every run with INFO lines. open_clip imports torch._dynamo (through timm/transformers);
# nothing of tier-openclip does. These loggers are put back to WARNING after setup_logging.
TORCH_INTERNAL_LOGGERS = ("torch._dynamo", "torch._subclasses", "torch._inductor", "torch.fx")


def quiet_torch_internals() -> list[str]:
    """Set torch's internal loggers that open_clip_train raised to INFO back to WARNING (a --debug
    run, at DEBUG, keeps them); returns their names."""
    import logging

    quieted = []
    for name in list(logging.root.manager.loggerDict):
        logger = logging.getLogger(name)
        if name.startswith(TORCH_INTERNAL_LOGGERS) and logger.level == logging.INFO:
            logger.setLevel(logging.WARNING)
            quieted.append(name)
    return quieted


# open_clip_train's --dataset-type csv: pandas.read_csv(sep=--csv-separator) of a table whose
# --csv-img-key column holds image paths and --csv-caption-key column the captions (data.py's
# CsvDataset). Its defaults, which the demo's training table uses:
TRAIN_CSV_SEPARATOR = "\t"
TRAIN_CSV_IMAGE_KEY = "filepath"
TRAIN_CSV_CAPTION_KEY = "title"


def csv_dataset_flags() -> list[str]:
    """open_clip_train's flags that read a training table in that layout (named although they are
    its defaults, so that a command line says what it reads)."""
    return ["--dataset-type", "csv", "--csv-separator", TRAIN_CSV_SEPARATOR, "--csv-img-key", TRAIN_CSV_IMAGE_KEY,
            "--csv-caption-key", TRAIN_CSV_CAPTION_KEY]


# open_clip_train/train.py's train_one_epoch logs, every --log-every-n-steps optimizer steps (and at
# an epoch's last), one line after logging's "date | INFO | " prefix:
#   Train Epoch: E [ N/TOTAL (P%)] Data (t): D Batch (t): B, R/s, R/s/gpu LR: ... Logit Scale: ... Loss: ...
# B is the mean seconds per step since the previous such line (its meters are reset after each), so
# with --log-every-n-steps 1 it is each step's time.
TRAIN_LOG_MARK = "Train Epoch: "
TRAIN_STEP_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \(\d+%\)\] Data \(t\): ([0-9.]+) Batch \(t\): ([0-9.]+),")


def is_train_step_line(line: str) -> bool:
    """Whether ``line`` is one of train_one_epoch's step lines (checked in full by parse_step_times)."""
    return TRAIN_LOG_MARK in line


def parse_step_times(log_text: str) -> list[float]:
    """The 'Batch (t)' seconds of every step line of a training log, in order. A line that names a
    train epoch in another form means open_clip changed its log line: OpenClipIncompatible, rather
    than timings silently missing."""
    times = []
    for line in log_text.splitlines():
        if not is_train_step_line(line):
            continue
        match = TRAIN_STEP_LINE.search(line)
        if match is None:
            raise _adapter.OpenClipIncompatible(
                f"open_clip {_adapter.open_clip_version()} logs its training steps in a form tier-openclip does not "
                f"know: {line.strip()!r} (expected {TRAIN_STEP_LINE.pattern!r}); update "
                "tier_openclip/openclip_adapter/runs.py")
        times.append(float(match.group(5)))
    return times
