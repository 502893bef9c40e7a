"""A model's frozen patch features and the masks in its input frame, and ``segmentation_evaluate``:
the probe on a prepared segmentation set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tier_openclip.evaluation.segmentation.probe import ProbeConfig, probe_evaluate

if TYPE_CHECKING:  # torch is imported where it runs: building the command line must stay light
    import torch


def extract_features(model: Any, preprocess: Callable, paths: Sequence[Path], *, device: str = "cpu",
                     batch_size: int = 32, num_workers: int = 0, progress: bool = False,
                     desc: str = "features") -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, E, rows, cols) float32 CPU patch embeddings of the frozen tower, and the input (height, width)."""
    import torch
    from tqdm import tqdm

    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.evaluation.grounding import grid_shape
    from tier_openclip.evaluation.image_files import ImageFiles, checked_batch, stack_or_errors
    from tier_openclip.features import token_features

    model = adapter.unwrap_model(model)
    dtype = next(model.visual.parameters()).dtype
    loader = torch.utils.data.DataLoader(ImageFiles(paths, preprocess), batch_size=batch_size, num_workers=num_workers,
                                         shuffle=False, collate_fn=stack_or_errors)
    chunks, input_size = [], None
    with torch.inference_mode():
        for batch in tqdm(loader, total=len(loader), unit="batch", desc=desc, disable=not progress, dynamic_ncols=True):
            batch = checked_batch(batch)
            tokens = token_features(model, images=batch.to(device=device, dtype=dtype))["image_tokens"].float()
            input_size = tuple(batch.shape[-2:])
            rows, cols = grid_shape(tokens.shape[1], input_size)
            chunks.append(tokens.reshape(len(batch), rows, cols, -1).permute(0, 3, 1, 2).cpu())
    return torch.cat(chunks).contiguous(), input_size  # type: ignore[return-value]


def masks_in_input_frame(mask_paths: Sequence[Path], image_sizes: Sequence[tuple[int, int]], input_size: tuple[int, int],
                         resize_mode: str = "shortest") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, H, W) bool masks sampled (nearest, at input pixel centres) through open_clip's
    validation resize + crop, and the pixels the stored image covers (None when all of them)."""
    import torch

    from tier_openclip.data_prep.seg_sets import read_mask
    from tier_openclip.evaluation.grounding import input_frame

    height, width = input_size
    samplers: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    masks, valids = [], []
    for path, (image_w, image_h) in zip(mask_paths, image_sizes):
        if (image_w, image_h) not in samplers:
            sx, sy, ox, oy = input_frame(input_size, (image_w, image_h), resize_mode)
            xs = np.floor((np.arange(width) + 0.5) * sx + ox).astype(int)
            ys = np.floor((np.arange(height) + 0.5) * sy + oy).astype(int)
            inside = ((ys >= 0) & (ys < image_h))[:, None] & ((xs >= 0) & (xs < image_w))[None, :]
            samplers[(image_w, image_h)] = (np.clip(ys, 0, image_h - 1), np.clip(xs, 0, image_w - 1), inside)
        ys, xs, inside = samplers[(image_w, image_h)]
        masks.append(read_mask(path)[ys[:, None], xs[None, :]] & inside)
        valids.append(inside)
    stacked = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.bool)
    valid = torch.from_numpy(np.stack(valids)) if valids else None
    return stacked, (None if valid is None or bool(valid.all()) else valid)


def segmentation_evaluate(model: Any, preprocess: Callable, data_dir: str | Path, *, label_fraction: float = 1.0,
                          seeds: int | None = None, device: str = "cpu", seed: int = 0,
                          config: ProbeConfig = ProbeConfig(), bootstrap: int = 1000, confidence: float = 0.95,
                          batch_size: int = 32, num_workers: int = 0, progress: bool = False) -> dict[str, Any]:
    """Linear-probe Dice, IoU and mIoU of ``model``'s frozen patch embeddings on a segmentation
    set's test split, trained on ``label_fraction`` of its train split, with the empty and prior
    baselines (module docstring). Returns the results schema."""
    from tier_openclip import openclip_adapter as adapter
    from tier_openclip.data_prep.seg_sets import read_seg_set
    from tier_openclip.evaluation.grounding import resize_mode_of

    seg = read_seg_set(data_dir)
    train, test = seg.split("train"), seg.split("test")
    if not train or not test:
        raise ValueError(f"{seg.directory}: the probe needs train and test images; splits.csv has "
                         f"{len(train)} train and {len(test)} test")
    inner = adapter.unwrap_model(model)
    was_training = inner.training
    inner.eval()  # frozen: no dropout, no batch-norm updates, no gradients (inference mode)
    try:
        resize_mode = resize_mode_of(preprocess)
        arrays = {}
        for name, items in (("train", train), ("test", test)):
            features, input_size = extract_features(inner, preprocess, [seg.path(i.image) for i in items], device=device,
                                                    batch_size=batch_size, num_workers=num_workers, progress=progress,
                                                    desc=f"features ({name})")
            masks, valid = masks_in_input_frame([seg.path(i.mask) for i in items], [seg.image_sizes[i.image] for i in items],
                                                input_size, resize_mode)
            arrays[name] = (features, masks, valid)
    finally:
        inner.train(was_training)
    results = probe_evaluate(arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
                             train_valid=arrays["train"][2], test_valid=arrays["test"][2], label_fraction=label_fraction,
                             seeds=seeds, seed=seed, config=config, bootstrap=bootstrap, confidence=confidence,
                             device=device, progress=progress)
    return {"dataset": seg.dataset, "target": seg.target, "data_dir": str(seg.directory), **results,
            "input_size": list(input_size), "resize_mode": resize_mode,
            "frame": "model input: masks sampled nearest through the image's resize and crop"}
