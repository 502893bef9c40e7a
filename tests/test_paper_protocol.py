"""The TIER authors' zero-shot protocol (`--prompts authors`) against a loop-by-loop definition,
the PadChest 57-finding mean, and the paper-layout table made from `eval zeroshot` results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from test_evaluate import CHEXPERT_LABELS, run_cli, training_args, write_eval_set
from tier_openclip.data_prep.chexpert import CHEXPERT_COMPETITION_LABELS
from tier_openclip.errors import CommandError, UsageError
from tier_openclip.evaluation import zeroshot as evaluate
from tier_openclip.evaluation.authors_protocol import (
    AUTHORS_CHEXPERT_LABELS, CHEXPERT_SENTENCES, NO_FINDING_SENTENCES, PADCHEST_FINDINGS, authors_prompts,
)  # fmt: skip
from tier_openclip.evaluation.prompts import resolve_prompts


@pytest.fixture(scope="module")
def tiny():
    from tier_openclip.models import load_model

    torch.manual_seed(0)
    return load_model("TIER-tiny")


def test_the_authors_lists_as_their_code_has_them():
    assert len(PADCHEST_FINDINGS) == len(set(PADCHEST_FINDINGS)) == 57
    assert set(AUTHORS_CHEXPERT_LABELS) == set(CHEXPERT_COMPETITION_LABELS) == set(CHEXPERT_SENTENCES)
    chexpert = authors_prompts("chexpert")
    assert list(chexpert) == list(AUTHORS_CHEXPERT_LABELS)
    assert chexpert["Pleural Effusion"] == {
        "positive": ["Blunting of the costophrenic angles represents pleural effusions.",
                     "The pleural space is filled with fluid.", "Layering pleural effusions are present."],
        "negative": [*NO_FINDING_SENTENCES, "No Pleural Effusion."],
    }  # fmt: skip
    assert chexpert["Atelectasis"]["positive"].count("Atelectasis is present.") == 2  # weighs double, as theirs
    assert len(NO_FINDING_SENTENCES) == 5
    padchest = authors_prompts("padchest")
    assert padchest["COPD signs"] == {"positive": ["COPD signsis present"], "negative": ["No COPD signs."]}
    with pytest.raises(ValueError, match="chexpert and padchest"):
        authors_prompts("ms-cxr")


def test_named_set_resolves_per_dataset_and_case_insensitively():
    # `prep padchest` lower-cases labels; CheXpert's "Cardiomegaly" must not leak into PadChest's.
    resolved = resolve_prompts(["copd signs", "cardiomegaly", "kyphosis"], "authors", "padchest")
    assert resolved["copd signs"]["positive"] == ["COPD signsis present"]
    assert resolved["cardiomegaly"] == {"positive": ["cardiomegalyis present"], "negative": ["No cardiomegaly."]}
    assert resolved["kyphosis"] == {"positive": ["kyphosis"], "negative": ["no kyphosis"]}  # not theirs: default
    chexpert = resolve_prompts(["Cardiomegaly", "No Finding"], "authors", "chexpert")
    assert chexpert["Cardiomegaly"]["positive"][1] == "The heart shadow is enlarged."
    assert chexpert["No Finding"] == {"positive": ["no finding"], "negative": ["finding"]}
    with pytest.raises(ValueError, match="not ''"):
        resolve_prompts(["Cardiomegaly"], "authors", None)


def _loop_embedding(model, tokenizer, sentences):
    """The authors' getLabelEmbeddings, one sentence at a time: mean of the l2-normalised
    projections, then (utils.get_all_preds) renormalised."""
    total = None
    for sentence in sentences:
        with torch.no_grad():
            vector = model.encode_text(tokenizer([sentence]))[0].double()
        vector = vector / vector.norm()
        total = vector if total is None else total + vector
    mean = total / len(sentences)
    return mean / mean.norm()


def test_authors_embedding_arithmetic_and_scores_match_a_loop(tiny, tmp_path):
    rng = np.random.default_rng(2)
    targets = np.tile([[1.0] * 14, [0.0] * 14], (4, 1))
    pixels = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(8)]
    data = write_eval_set(tmp_path / "chexpert", CHEXPERT_LABELS, targets, pixels)
    results = evaluate.zeroshot_evaluate(tiny.model, tiny.preprocess, tiny.tokenizer, data, prompts="authors", bootstrap=0)
    prompts = resolve_prompts(AUTHORS_CHEXPERT_LABELS, "authors", "chexpert")
    got = evaluate.prompt_embeddings(tiny.model, tiny.tokenizer, prompts, "cpu")
    eval_set = evaluate.read_eval_set(data)
    scores = evaluate.zeroshot_scores(tiny.model, tiny.preprocess, tiny.tokenizer, eval_set.images, prompts)
    images = []
    for path in eval_set.images:
        with torch.no_grad():
            image = tiny.model.encode_image(tiny.preprocess(Image.open(path).convert("RGB"))[None])[0].double()
        images.append(image / image.norm())
    for j, label in enumerate(AUTHORS_CHEXPERT_LABELS):
        positive = _loop_embedding(tiny.model, tiny.tokenizer, CHEXPERT_SENTENCES[label])
        negative = _loop_embedding(tiny.model, tiny.tokenizer, [*NO_FINDING_SENTENCES, f"No {label}."])
        torch.testing.assert_close(got[j, 0].double(), positive, atol=1e-6, rtol=0)
        torch.testing.assert_close(got[j, 1].double(), negative, atol=1e-6, rtol=0)
        for i, image in enumerate(images):
            assert scores[i, j] == pytest.approx(float(image @ positive - image @ negative), abs=1e-6)
        assert results["labels"][label]["prompts"] == prompts[label]


def test_padchest_mean_over_the_papers_57_findings(tiny, tmp_path):
    labels = ["cardiomegaly", "copd signs", "kyphosis"]  # two of the 57, one not
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 3, dtype=float)
    rng = np.random.default_rng(3)
    pixels = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(12)]
    data = write_eval_set(tmp_path / "padchest", labels, targets, pixels, dataset="padchest")
    results = evaluate.zeroshot_evaluate(tiny.model, tiny.preprocess, tiny.tokenizer, data, prompts="authors",
                                         bootstrap=0, min_positives=1)
    assert results["means"]["tier57"]["labels"] == ["cardiomegaly", "copd signs"]
    assert results["means"]["tier57"]["mean_auc"] == pytest.approx(
        np.mean([results["labels"][k]["auc"] for k in ("cardiomegaly", "copd signs")]))
    assert results["labels"]["copd signs"]["prompts"]["positive"] == ["COPD signsis present"]
    assert "tier57" not in evaluate.zeroshot_evaluate(  # a CheXpert set has no such mean
        tiny.model, tiny.preprocess, tiny.tokenizer, write_eval_set(tmp_path / "c", ["Edema"], targets[:, :1],
                                                                     pixels), bootstrap=0)["means"]  # fmt: skip


def _result(dataset, aucs, means, num_images=10, **extra):
    return {"dataset": dataset, "num_images": num_images, "min_positives": 1, **extra,
            "labels": {label: {"auc": auc} for label, auc in aucs.items()},
            "means": {group: {"labels": list(members), "mean_auc": float(np.mean([aucs[m] for m in members]))}
                      for group, members in means.items()}}  # fmt: skip


def test_paper_table_layout_from_results():
    chexpert_aucs = dict(zip(AUTHORS_CHEXPERT_LABELS, [0.81, 0.72, 0.63, 0.54, 0.95]))
    chexpert = _result("chexpert", {**chexpert_aucs, "Fracture": 0.4}, {"competition": AUTHORS_CHEXPERT_LABELS},
                       split="test", prompts_set="authors")
    padchest_aucs = {finding.lower(): 0.5 + i / 200 for i, finding in enumerate(PADCHEST_FINDINGS)}
    padchest = _result("padchest", padchest_aucs, {"tier57": list(padchest_aucs)}, prompts_set="authors")
    partial = _result("padchest", {"cardiomegaly": 0.9, "nodule": 0.7}, {"tier57": ["cardiomegaly", "nodule"]})
    table = evaluate.paper_table_markdown([("TIER", [padchest, chexpert]), ("CLIP", [partial])])
    lines = table.splitlines()
    assert lines[2] == ("| Model | Cardiomegaly | Edema | Consolidation | Atelectasis | Pleural Effusion | "
                        "CheXpert mean (5) | PadChest mean (57) |")
    padchest_mean = np.mean(list(padchest_aucs.values()))
    assert lines[4] == f"| TIER | 0.810 | 0.720 | 0.630 | 0.540 | 0.950 | 0.730 | {padchest_mean:.3f} |"
    assert lines[5] == "| CLIP | – | – | – | – | – | – | 0.800 (2 of 57) |"
    assert lines[6] == "| Chance (any image-free score) | " + " | ".join(["0.500"] * 7) + " |"
    assert "- TIER: CheXpert test, 10 images; PadChest 10 images, min. 1 positives; prompts: authors." in lines
    with pytest.raises(ValueError, match="two chexpert results"):
        evaluate.paper_table_markdown([("x", [chexpert, chexpert])])


def test_paper_table_cli_reads_eval_zeroshot_json(tiny, tmp_path, capsys):
    """End to end: `eval zeroshot --prompts authors --out` on both sets, then `eval paper-table`."""
    checkpoint = tmp_path / "epoch_1.pt"  # as open_clip_train saves it from DDP
    state = {f"module.{k}": v for k, v in tiny.model.state_dict().items()}
    torch.save({"epoch": 1, "name": "run", "state_dict": state, "optimizer": {}}, checkpoint)
    rng = np.random.default_rng(5)
    pixels = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(8)]
    chexpert = write_eval_set(tmp_path / "chexpert", CHEXPERT_LABELS, np.tile([[1.0] * 14, [0.0] * 14], (4, 1)), pixels)
    padchest = write_eval_set(tmp_path / "padchest", ["cardiomegaly", "nodule"], np.tile([[1.0, 0.0], [0.0, 1.0]], (4, 1)),
                              pixels, dataset="padchest")  # fmt: skip
    outputs = {}
    for dataset, data in (("chexpert", chexpert), ("padchest", padchest)):
        outputs[dataset] = tmp_path / f"{dataset}.json"
        assert run_cli(["eval", "zeroshot", "--model", "TIER-tiny", "--pretrained", str(checkpoint), "--dataset", dataset,
                        "--data", str(data), "--prompts", "authors", "--bootstrap", "0", "--min-positives", "1",
                        "--workers", "0", "--device", "cpu", "--out", str(outputs[dataset])]) == 0  # fmt: skip
    saved = json.loads(outputs["chexpert"].read_text())
    assert saved["prompts_set"] == "authors" and saved["labels"]["Edema"]["prompts"]["positive"][1] == "Edema is present."
    capsys.readouterr()
    table_path = tmp_path / "table.md"
    assert run_cli(["eval", "paper-table", "--row", "TIER-tiny", str(outputs["padchest"]), str(outputs["chexpert"]),
                    "--out", str(table_path)]) == 0  # fmt: skip
    table = table_path.read_text()
    assert table in capsys.readouterr().out
    padchest_saved = json.loads(outputs["padchest"].read_text())
    row = [line for line in table.splitlines() if line.startswith("| TIER-tiny |")][0]
    assert row.endswith(f"| {padchest_saved['means']['tier57']['mean_auc']:.3f} (2 of 57) |")
    assert f"| {saved['means']['competition']['mean_auc']:.3f} |" in row


def test_paper_table_cli_errors(tmp_path):
    with pytest.raises(UsageError, match="give a name and one or two results files"):
        run_cli(["eval", "paper-table", "--row", "only-a-name"])
    with pytest.raises(UsageError, match="no such file"):
        run_cli(["eval", "paper-table", "--row", "x", str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataset": "chexpert"}')
    with pytest.raises(CommandError, match="not `tier-openclip eval zeroshot` results"):
        run_cli(["eval", "paper-table", "--row", "x", str(bad)])
    bad.write_text("{oops")
    with pytest.raises(CommandError, match="is not JSON"):
        run_cli(["eval", "paper-table", "--row", "x", str(bad)])
    with pytest.raises(UsageError, match="--out"):  # the table never replaces a results file it reads
        run_cli(["eval", "paper-table", "--row", "x", str(bad), "--out", str(bad)])
    assert bad.read_text() == "{oops"
    data = write_eval_set(tmp_path / "c", ["Edema"], [[1.0], [0.0]], [np.zeros((8, 8), np.uint8)] * 2)
    with pytest.raises(UsageError, match="no such file"):  # only the exact name is a named set
        run_cli(["eval", "zeroshot", "--model", "TIER-tiny", "--dataset", "chexpert", "--data", str(data),
                 "--prompts", "author"])  # fmt: skip


def test_zeroshot_during_training_uses_the_given_prompts(tiny, tmp_path):
    rng = np.random.default_rng(6)
    targets = np.tile([[1.0] * 14, [0.0] * 14], (3, 1))
    targets[::3] = 1 - targets[::3]
    pixels = [(rng.random((64, 64)) * 255).astype(np.uint8) for _ in range(6)]
    data = write_eval_set(tmp_path / "chexpert", CHEXPERT_LABELS, targets, pixels)
    model = tiny.model.eval()
    args = training_args(tmp_path, data, tier_zeroshot_prompts="authors", epochs=1, zeroshot_frequency=1)
    metrics = evaluate.zeroshot_during_training(model, 1, args)
    authors = evaluate.zeroshot_evaluate(model, tiny.preprocess, tiny.tokenizer, data, prompts="authors", bootstrap=0)
    default = evaluate.zeroshot_evaluate(model, tiny.preprocess, tiny.tokenizer, data, bootstrap=0)
    assert metrics["chexpert-zeroshot-mean-auc-competition"] == pytest.approx(authors["means"]["competition"]["mean_auc"])
    assert authors["means"]["competition"]["mean_auc"] != pytest.approx(default["means"]["competition"]["mean_auc"])
    assert evaluate.check_training_set("chexpert", str(data), "authors") is None
    message = evaluate.check_training_set("chexpert", str(data), str(tmp_path / "none.json"))
    assert message.startswith("--tier-zeroshot-prompts ") and "does not exist" in message
