"""Two gloo processes on CPU: TierLoss gives the single-process result on the concatenated batch.

open_clip's main wraps CPU models in DDP with device_ids=[cpu], which fails, so distribution is
tested at loss level: what DDP would average is (1/W)·Σ_r ∂L_r/∂x, and that must equal the
gradient of the single-process loss on all W·n pairs.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from gloo_worker import GRAD_KEYS, SETTINGS, WORLD_SIZE, full_batch, loss_and_grads, rank_worker


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """One spawn for every setting: starting the processes is most of the cost."""
    manager = mp.Manager()
    results = manager.dict()
    init_file = tmp_path_factory.mktemp("gloo") / "init"
    mp.spawn(rank_worker, args=(str(init_file), results), nprocs=WORLD_SIZE, join=True)
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
