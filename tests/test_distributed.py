"""Two gloo processes on CPU: TierLoss gives the single-process result on the concatenated batch.

open_clip's main wraps CPU models in DDP with device_ids=[cpu], which fails, so distribution is
tested at loss level: what DDP would average is (1/W)·Σ_r ∂L_r/∂x, and that must equal the
gradient of the single-process loss on all W·n pairs.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
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


def _worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local = {k: v[rows] for k, v in full_batch().items()}
        for setting, kwargs in SETTINGS.items():
            results[setting, rank] = loss_and_grads(local, rank=rank, world_size=WORLD_SIZE, **kwargs)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """One spawn for every setting: starting the processes is most of the cost."""
    manager = mp.Manager()
    results = manager.dict()
    init_file = tmp_path_factory.mktemp("gloo") / "init"
    mp.spawn(_worker, args=(str(init_file), results), nprocs=WORLD_SIZE, join=True)
    return {key: value for key, value in results.items()}


@pytest.mark.parametrize("setting", SETTINGS)
def test_two_processes_match_one_process_on_the_concatenated_batch(distributed_results, setting):
    results = {rank: distributed_results[setting, rank] for rank in range(WORLD_SIZE)}

    single_kwargs = {k: v for k, v in SETTINGS[setting].items() if k == "siglip"}
    expected_loss, expected_grads = loss_and_grads(full_batch(), **single_kwargs)
    mean_loss = sum(results[r][0] for r in range(WORLD_SIZE)) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, expected_loss, rtol=1e-5, atol=1e-6)
    for key in GRAD_KEYS:
        averaged = torch.cat([results[r][1][key] for r in range(WORLD_SIZE)]) / WORLD_SIZE
        torch.testing.assert_close(averaged, expected_grads[key], rtol=1e-4, atol=1e-6, msg=key)
