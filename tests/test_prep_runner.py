"""data_prep/runner.py: every `tier-openclip prep` subcommand runs through the one runner, so each
takes the run lock, refuses a foreign --out and writes failures.csv in the one schema.

Each subcommand gets the smallest inputs that pass its checks and its selection (the images do
not exist: their failures come after the lock), so a refusal can only come from the runner.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest
from data_prep_fixtures import CHEXPERT_HEADER, PADCHEST_HEADER, write_csv

from tier_openclip.data_prep import cli, shards
from tier_openclip.data_prep.atomic import FAILURE_COLUMNS
from tier_openclip.data_prep.chexpert import CHEXPERT_LABELS


def _mimic(tmp: Path) -> list[str]:
    (tmp / "mimic" / "files").mkdir(parents=True)
    meta = tmp / "meta"
    write_csv(meta / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], [["d1", 50000001, 10000001, "train"]])
    write_csv(meta / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
              [["d1", 10000001, 50000001, "PA"]])  # fmt: skip
    write_csv(meta / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS],
              [[10000001, 50000001] + [""] * len(CHEXPERT_LABELS)])  # fmt: skip
    return ["mimic-cxr", "--mimic-root", str(tmp / "mimic"), "--metadata-dir", str(meta)]


def _chexpert(tmp: Path) -> list[str]:
    row = ["CheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg", "", "", "Frontal"] + [""] * (len(CHEXPERT_HEADER) - 4)
    return ["chexpert", "--csv", str(write_csv(tmp / "valid.csv", CHEXPERT_HEADER, [row]))]


def _padchest(tmp: Path) -> list[str]:
    row = {name: "" for name in PADCHEST_HEADER}
    row.update(ImageID="img1.png", ImageDir="0", Projection="PA", MethodLabel="Physician", Labels="['normal']")
    return ["padchest", "--csv", str(write_csv(tmp / "padchest.csv", PADCHEST_HEADER, [list(row.values())]))]


def _ms_cxr(tmp: Path) -> list[str]:
    header = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height", "split"]
    row = ["d1", "Cardiomegaly", "enlarged heart", "files/p10/p10000001/s50000001/d1.jpg", 10, 10, 20, 20, 64, 64, "test"]
    return ["ms-cxr", "--csv", str(write_csv(tmp / "ms_cxr.csv", header, [row]))]


def _siim(tmp: Path) -> list[str]:
    return ["siim", "--rle-csv", str(write_csv(tmp / "train-rle.csv", ["ImageId", " EncodedPixels"], [["1.2.3", "-1"]]))]


def _rsna(tmp: Path) -> list[str]:
    header = ["patientId", "x", "y", "width", "height", "Target"]
    return ["rsna", "--csv", str(write_csv(tmp / "labels.csv", header, [["p1", "", "", "", "", "0"]]))]


COMMANDS = {"mimic-cxr": _mimic, "chexpert": _chexpert, "padchest": _padchest, "ms-cxr": _ms_cxr, "siim": _siim,
            "rsna": _rsna}  # fmt: skip


def command(name: str, tmp: Path, out: Path) -> list[str]:
    """The subcommand's argv on its smallest inputs, writing to ``out``."""
    argv = COMMANDS[name](tmp)
    if name != "mimic-cxr":
        (tmp / "images").mkdir(exist_ok=True)
        argv += ["--image-root", str(tmp / "images")]
    return [*argv, "--out", str(out), "--image-size", "16", "--workers", "1", "--sample-timeout", "60", "--quiet"]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tier-openclip")
    cli.add_prep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prep", *argv])
    return args.func(args)


def test_every_prep_subcommand_is_covered():
    parser = cli.build_parser()
    [subcommands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(subcommands.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_second_run_on_one_out_is_refused(name, tmp_path, capsys):
    out = tmp_path / "out"
    with shards.run_lock(out / shards.STATE_DIR):  # another run holds --out
        assert run_cli(command(name, tmp_path, out)) == 2
    error = capsys.readouterr().err
    assert "another prep run is writing to" in error and error.count("\n") == 1
    assert sorted(p.name for p in out.rglob("*")) == [shards.STATE_DIR, "lock"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_foreign_out_is_refused(name, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_bytes(b"the user's own file")
    assert run_cli(command(name, tmp_path, out)) == 2
    error = capsys.readouterr().err
    assert "was not written by tier-openclip prep" in error and error.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_bytes() == b"the user's own file"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_writes_failures_csv_in_one_schema(name, tmp_path):
    out = tmp_path / "out"
    assert run_cli(command(name, tmp_path, out)) == 0
    with open(out / "failures.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == FAILURE_COLUMNS
    # the one input names an image that does not exist, or (MIMIC) a study without a report
    assert len(rows) == 2 and rows[1][1] in ("skipped", "failed") and rows[1][2] in ("image_missing", "report_missing")
    assert (out / shards.STATE_DIR).is_dir()


@pytest.mark.parametrize("raised, status, message", [
    (KeyboardInterrupt(), 130, "interrupted: run the same command again to resume"),
    (OSError(28, "No space left on device"), 1,
     "[Errno 28] No space left on device. Fix it and run the same command again: finished work is kept."),
])
def test_prep_reports_in_every_commands_one_error_form(raised, status, message, tmp_path, capsys, monkeypatch):
    """`tier-openclip prep: message` (tier_openclip.errors.error_line), one line, with prep's exit statuses."""
    from tier_openclip.data_prep import ms_cxr

    def prepare(*args, **kwargs):
        raise raised

    monkeypatch.setattr(ms_cxr, "prepare_ms_cxr", prepare)
    assert run_cli(command("ms-cxr", tmp_path, tmp_path / "out")) == status
    assert capsys.readouterr().err == f"tier-openclip prep: {message}\n"
