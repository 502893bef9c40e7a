"""Rank worker for tests/test_distributed.py: a module of its own so that spawned processes can
import it (pytest's importlib mode gives test modules names that a child cannot import)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tier_openclip import TierLoss

WORLD_SIZE = 2
PER_RANK = 4
SETTINGS = {
    "clip-gather-with-grad": dict(gather_with_grad=True),
    "clip-local-loss": dict(gather_with_grad=True, local_loss=True),
    "siglip": dict(siglip=True),
}


def full_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    n, t, p, d = WORLD_SIZE * PER_RANK, 5, 6, 8
    return {
        "image_features": F.normalize(torch.randn(n, d, generator=g), dim=-1),
        "text_features": F.normalize(torch.randn(n, d, generator=g), dim=-1),
        "image_tokens": F.normalize(torch.randn(n, p, d, generator=g), dim=-1),
        "text_tokens": F.normalize(torch.randn(n, t, d, generator=g), dim=-1),
        "text_mask": torch.arange(t)[None, :] < torch.randint(1, t + 1, (n, 1), generator=g),
    }


GRAD_KEYS = ("image_features", "text_features", "image_tokens", "text_tokens")


def loss_and_grads(batch, **kwargs):
    inputs = {k: (v.clone().requires_grad_() if k in GRAD_KEYS else v) for k, v in batch.items()}
    extra = {"logit_bias": torch.tensor(-5.0)} if kwargs.get("siglip") else {}
    loss = TierLoss(0.4, 0.2, impl="torch", **kwargs)(**inputs, logit_scale=torch.tensor(10.0), **extra)
    loss.backward()
    return loss.detach(), {k: inputs[k].grad for k in GRAD_KEYS}


def rank_worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local = {k: v[rows] for k, v in full_batch().items()}
        for setting, kwargs in SETTINGS.items():
            results[setting, rank] = loss_and_grads(local, rank=rank, world_size=WORLD_SIZE, **kwargs)
    finally:
        dist.destroy_process_group()
