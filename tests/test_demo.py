"""A reduced `tier-openclip demo`: every artefact is produced and well-formed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tier_openclip.demo import DemoOptions, run_demo

pytestmark = pytest.mark.slow


def test_reduced_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    options = DemoOptions(out=out, seeds=1, losses=("clip", "tier"), epochs=1, bootstrap=5, heatmap_images=2,
                          progress=False, phantom_overrides={"num_train": 128, "num_test": 96, "shard_size": 64})
    result = run_demo(options)

    for loss in ("clip", "tier"):
        assert (out / "runs" / f"{loss}-seed0" / "checkpoints" / "epoch_1.pt").is_file()
        assert f"loss: {loss}\n" in (out / "runs" / f"{loss}-seed0" / "params.txt").read_text()
    saved = json.loads((out / "demo.json").read_text())
    assert saved["summary"].keys() == {"clip", "tier"} == result["summary"].keys()
    for metrics in saved["summary"].values():
        assert set(metrics) >= {"mean zero-shot AUC", "H token→patch", "H patch→token", "pointing game"}
        for value in metrics.values():
            assert len(value["values"]) == 1 and value["sd"] == 0.0
    tier = saved["runs"]["tier"][0]
    assert 0 <= tier["pointing_game"]["accuracy"] <= 1 and tier["pointing_game"]["boxes"] > 0
    assert 0 < tier["similarity"]["entropy_token_to_patch"] <= tier["similarity"]["max_entropy_token_to_patch"] + 1e-6

    report = (out / "report.md").read_text()
    assert "| mean zero-shot AUC |" in report and "| clip | tier |" in report
    assert "![sparsity curves](sparsity.png)" in report
    assert Image.open(out / "sparsity.png").size[0] > 500
    heatmaps = sorted((out / "heatmaps").glob("*.png"))
    assert len(heatmaps) == 2 and all(f"heatmaps/{p.name}" in report for p in heatmaps)


def test_unknown_loss_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="unknown loss 'entropy'"):
        run_demo(DemoOptions(out=tmp_path, losses=("entropy",)))
