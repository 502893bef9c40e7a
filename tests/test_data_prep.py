"""tier_openclip.data_prep: reports, DICOM decoding, MIMIC-CXR shards (DICOM and JPG paths),
open_clip loading, privacy, determinism, kill-and-resume, and the evaluation sets.

The MIMIC-shaped release is built by data_prep_fixtures.build_mimic (small images, several
transfer syntaxes, damaged files and reports); only the RG1 test uses a full-size radiograph.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from data_prep_fixtures import (
    PHI_MARKERS,
    REPORT_NO_IMPRESSION,
    REPORT_NORMAL,
    REPORT_NOT_UTF8,
    REPORT_REPEATED,
    build_chexpert,
    build_mimic,
    build_padchest,
    dicom_dataset,
    render_or_die,
    render_text,
    save_dicom,
    smooth_image,
    zip_reports,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tier_openclip
from tier_openclip.data_prep import cli, images, reports, shards
from tier_openclip.data_prep.mimic import JSON_FIELDS

SIZE = 64  # --image-size of the MIMIC runs
SHARD = 3  # --shard-size: several shards per split


def run_cli(*argv: str) -> int:
    """Parse with the parser as the main command builds it, then run, as `tier-openclip` does."""
    parser = argparse.ArgumentParser(prog="tier-openclip")
    cli.add_prep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prep", *argv])
    return args.func(args)


def mimic_args(mimic: Path, jpg: Path, out: Path, *extra: str, source: str = "dicom") -> list[str]:
    argv = ["mimic-cxr", "--mimic-root", str(mimic), "--out", str(out), "--image-size", str(SIZE),
            "--shard-size", str(SHARD), "--quiet"]  # fmt: skip
    argv += ["--image-root", str(jpg)] if source == "jpg" else ["--metadata-dir", str(jpg)]
    return [*argv, *extra]


def read_shards(split_dir: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} over every shard of a split, checking keys are unique."""
    samples: dict[str, dict[str, bytes]] = {}
    for path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                samples.setdefault(key, {})
                assert extension not in samples[key], f"{member.name} twice"
                samples[key][extension] = tar.extractfile(member).read()
    return samples


def tree_bytes(out: Path) -> dict[str, bytes]:
    """Every shard and sizes.json under out (what must be byte-identical across runs)."""
    paths = sorted(p for p in out.glob("*/*") if not p.parent.name.startswith(".") and p.suffix in (".tar", ".json"))
    return {str(p.relative_to(out)): p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return build_mimic(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def dicom_run(release, tmp_path_factory):
    """The reference run: DICOM path, one worker."""
    mimic, jpg, _ = release
    out = tmp_path_factory.mktemp("dicom-run") / "out"
    assert run_cli(*mimic_args(mimic, jpg, out, "--workers", "1")) == 0
    return out


# ---------------------------------------------------------------------------------------------
# Reports


def test_sections_last_header_wins_and_irregular_text():
    sections = reports.parse_sections(REPORT_NORMAL)
    assert sections["impression"] == "No acute cardiopulmonary process."
    assert sections["findings"] == "The lungs are clear. No pleural effusion. Heart size is normal."
    assert sections["indication"] == "___ with cough."  # de-identified spans are kept
    assert "FINAL REPORT" not in " ".join(sections.values())
    repeated = reports.parse_sections(REPORT_REPEATED)
    assert repeated["impression"] == "Small left pleural effusion, new since ___."  # last IMPRESSION
    assert repeated["findings"] == "Small left pleural effusion."  # later empty FINDINGS ignored
    assert reports.normalize_section_name("IMPRESSIONS") == "impression"
    assert reports.normalize_section_name("FINDINGS AND IMPRESSION") == "impression"
    assert reports.normalize_section_name("CONCLUSION") == "impression"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("impression", (None, "report_section_missing")),
        ("findings", ("Right internal jugular line ends in the low SVC. No pneumothorax.", None)),
        ("impression-or-findings", ("Right internal jugular line ends in the low SVC. No pneumothorax.", None)),
        ("findings+impression", ("Right internal jugular line ends in the low SVC. No pneumothorax.", None)),
    ],
)
def test_text_modes_without_impression(mode, expected):
    choice = reports.choose_text(reports.parse_sections(REPORT_NO_IMPRESSION), mode)
    assert (choice.text, choice.reason) == expected


def test_text_modes_both_sections_and_empty():
    sections = reports.parse_sections(REPORT_NORMAL)
    both = reports.choose_text(sections, "findings+impression").text
    assert both == f"{sections['findings']} {sections['impression']}"
    empty = reports.parse_sections(" FINDINGS:  Mild cardiomegaly.\n\n IMPRESSION:\n\n")
    assert reports.choose_text(empty, "impression").reason == "report_section_empty"
    assert reports.choose_text(empty, "impression-or-findings").text == "Mild cardiomegaly."


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["FINDINGS:", "IMPRESSION:", "FINAL REPORT", " ", "\n", "\t", "___", "No effusion.",
                                 "IMPRESSIONS :", "Dr. ___ paged.", "\r\n", "CONCLUSION:", "a:b"]), max_size=30))  # fmt: skip
def test_section_parser_never_fails_and_cleans(tokens):
    text = "".join(tokens)
    sections = reports.parse_sections(text)
    for body in sections.values():
        assert body == body.strip() and "  " not in body and "\n" not in body and "\t" not in body
    for mode in reports.TEXT_MODES:
        choice = reports.choose_text(sections, mode)
        assert (choice.text is None) != (choice.reason is None)
        assert choice.text is None or choice.text.strip()


@given(st.integers(0, 40), st.integers(1, 9))
def test_shard_plan_is_a_partition_in_order(count, size):
    items = [f"k{i}" for i in range(count)]
    plans = shards.plan_shards("train", items, size, lambda chunk: "|".join(chunk))
    assert [item for plan in plans for item in plan.tasks] == items
    assert all(1 <= len(plan.tasks) <= size for plan in plans)
    assert [plan.name for plan in plans] == [f"train-{i:06d}.tar" for i in range(len(plans))]
    assert plans == shards.plan_shards("train", items, size, lambda chunk: "|".join(chunk))  # pure


def test_report_decoding_fallback():
    assert reports.decode_report(b"\xef\xbb\xbfIMPRESSION: ok").text == "IMPRESSION: ok"
    decoded = reports.decode_report(REPORT_NOT_UTF8)
    assert decoded.used_fallback and decoded.encoding == "cp1252"
    assert "Nodule \u2013 unchanged" in decoded.text and "caf\u00e9" in decoded.text
    assert reports.decode_report(b"\x81\x8d x").encoding == "latin-1"  # undefined in cp1252


# ---------------------------------------------------------------------------------------------
# Images


def test_transfer_syntaxes_decode_to_the_same_image(tmp_path):
    from pydicom.uid import JPEG2000Lossless, RLELossless

    pixels = smooth_image(70, 90, 11, 50000, 500)
    outputs = {}
    for name, syntax in [("plain", None), ("rle", RLELossless), ("j2k", JPEG2000Lossless)]:
        path = save_dicom(dicom_dataset(pixels, window=(25000, 40000)), tmp_path / f"{name}.dcm", syntax)
        gray = images.dicom_to_uint8(path)
        assert gray.image.mode == "L" and gray.image.size == (90, 70) and gray.notes == []
        outputs[name] = np.asarray(gray.image)
    assert np.array_equal(outputs["plain"], outputs["rle"])
    assert np.array_equal(outputs["plain"], outputs["j2k"])


def test_window_and_monochrome1_match_an_independent_numpy_decode(tmp_path):
    pixels = smooth_image(64, 64, 12, 4095)
    center, width = 1500.0, 2000.0
    mono2 = np.asarray(images.dicom_to_uint8(save_dicom(
        dicom_dataset(pixels, bits_stored=12, window=(center, width)), tmp_path / "m2.dcm")).image, dtype=float)  # fmt: skip
    # DICOM PS3.3 C.11.2.1.2.1, linear window, by hand
    expected = np.clip((pixels - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    assert np.abs(mono2 - expected).max() <= 1.0
    mono1 = np.asarray(images.dicom_to_uint8(save_dicom(
        dicom_dataset(pixels, bits_stored=12, window=(center, width), photometric="MONOCHROME1"), tmp_path / "m1.dcm")).image, dtype=float)  # fmt: skip
    assert np.abs(mono1 - (255 - expected)).max() <= 1.0


def test_sixteen_bit_minmax_rescale_and_voi_lut_sequence(tmp_path):
    from pydicom.dataset import Dataset

    full = smooth_image(50, 60, 13, 65535)
    gray = images.dicom_to_uint8(save_dicom(dicom_dataset(full), tmp_path / "16.dcm"))
    assert gray.notes == ["no_voi_minmax"]
    assert np.abs(np.asarray(gray.image, float) - full / 65535 * 255).max() <= 1.0  # min-max: 0..65535

    signed = smooth_image(40, 40, 14, 1500, -1500)
    gray = images.dicom_to_uint8(save_dicom(dicom_dataset(signed, signed=True, rescale=(2.0, 100.0)), tmp_path / "s.dcm"))
    expected = (signed - signed.min()) / np.ptp(signed) * 255  # min-max after a linear rescale
    assert np.abs(np.asarray(gray.image, float) - expected).max() <= 1.0

    ds = dicom_dataset(smooth_image(32, 32, 15, 255), bits_stored=8)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.LUTData = np.rint(np.linspace(65535, 0, 256)).astype("<u2").tobytes()  # inverting, 16-bit output
    ds.VOILUTSequence = [lut]
    gray = images.dicom_to_uint8(save_dicom(ds, tmp_path / "lut.dcm"))
    expected = 255 - smooth_image(32, 32, 15, 255)
    assert np.abs(np.asarray(gray.image, float) - expected).max() <= 1.0


def test_invalid_window_falls_back_to_minmax(tmp_path):
    pixels = smooth_image(32, 32, 16, 4095)
    gray = images.dicom_to_uint8(save_dicom(dicom_dataset(pixels, bits_stored=12, window=(100, 0)), tmp_path / "w.dcm"))
    assert gray.notes == ["voi_invalid_minmax"]
    assert np.asarray(gray.image).min() == 0 and np.asarray(gray.image).max() == 255


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_resize_modes_keep_aspect(mode):
    source = Image.new("L", (200, 100), 0)
    source.paste(255, (0, 0, 200, 100))
    result = images.resize_square(images.GrayImage(source), 50, mode)
    assert result.image.size == (50, 50) and result.notes == []
    array = np.asarray(result.image)
    if mode == "pad":  # 50x25 image centred on black
        assert array[:12].max() == 0 and array[-12:].max() == 0 and array[13:37].min() == 255
    else:  # 100x50, centre-cropped: all image
        assert array.min() == 255
    small = images.resize_square(images.GrayImage(Image.new("L", (20, 30), 9)), 50, mode)
    assert small.image.size == (50, 50) and small.notes == ["upsampled"]


def test_rg1_real_cr_image_matches_independent_decode_and_is_not_inverted():
    """The computed-radiography chest image shipped by pydicom-data (MONOCHROME1, 15-bit,
    1955x1841), uncompressed and JPEG 2000, through the pipeline's sample renderer."""
    import pydicom
    from pydicom.data import get_testdata_file

    from tier_openclip.data_prep.mimic import RenderOptions, SampleTask, render_sample

    options = RenderOptions(source="dicom", image_size=512, resize="pad", image_format="png", jpeg_quality=95)
    outputs = {}
    for name in ("RG1_UNCI.dcm", "RG1_J2KR.dcm"):
        task = SampleTask(name, get_testdata_file(name), "text", b"{}", 1, 1)
        result = render_sample(task, options)
        assert result.files is not None, result.detail
        image = Image.open(io.BytesIO(result.files["png"]))
        assert image.mode == "L" and image.size == (512, 512)
        outputs[name] = np.asarray(image, dtype=np.float64)

    # Independent decode: plain numpy, the header's linear window, MONOCHROME1 inverted.
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.pixel_array.shape == (1955, 1841)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    values = ds.pixel_array.astype(np.float64)
    expected = 1.0 - np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    expected_image = Image.fromarray(np.rint(expected * 255).astype(np.uint8))
    scale = 512 / 1955
    resized = expected_image.resize((round(1841 * scale), 512), Image.Resampling.BILINEAR)
    left = (512 - resized.size[0]) // 2
    output = outputs["RG1_UNCI.dcm"]
    assert output[:, :left].max() == 0 and output[:, left + resized.size[0]:].max() == 0  # black padding
    inside = output[:, left : left + resized.size[0]]
    correlation = np.corrcoef(inside.ravel(), np.asarray(resized, dtype=np.float64).ravel())[0, 1]
    assert correlation > 0.99, correlation

    # Not inverted, right way up: the spine/mediastinum strip is brighter than the lung fields,
    # and the lungs (upper middle) darker than the abdomen below the diaphragm.
    width_px = inside.shape[1]
    centre_strip = inside[100:350, int(width_px * 0.45) : int(width_px * 0.55)].mean()
    lungs = np.mean([inside[100:350, int(width_px * f) : int(width_px * (f + 0.1))].mean() for f in (0.2, 0.7)])
    assert centre_strip > lungs + 15, (centre_strip, lungs)
    assert inside[420:500, int(width_px * 0.2) : int(width_px * 0.8)].mean() > lungs
    # The JPEG 2000 copy gives nearly the same output.
    difference = np.abs(outputs["RG1_J2KR.dcm"] - output)
    assert difference.mean() < 1.0 and np.corrcoef(outputs["RG1_J2KR.dcm"].ravel(), output.ravel())[0, 1] > 0.999


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR end to end


def test_dicom_run_writes_expected_samples_reasons_and_files(release, dicom_run):
    _, _, cases = release
    manifest = json.loads((dicom_run / "manifest.json").read_text())
    assert manifest["options"]["image_size"] == SIZE and manifest["options"]["shard_size"] == SHARD
    assert manifest["source"] == "dicom"
    failures = list(csv.DictReader(open(dicom_run / "failures.csv")))
    by_key = {row["dicom_id"]: row for row in failures}
    written = {}
    for split in ("train", "validate", "test"):
        samples = read_shards(dicom_run / split)
        sizes = json.loads((dicom_run / split / "sizes.json").read_text())
        assert sorted(sizes) == sorted(p.name for p in (dicom_run / split).glob("*.tar"))
        assert sum(sizes.values()) == len(samples) == manifest["splits"][split]["written"]
        written.update(samples)
    for case in cases:
        kind, _, reason = case.expect.partition(":")
        if kind == "written":
            assert case.dicom_id in written, case.name
        else:
            assert case.dicom_id not in written, case.name
        if kind in ("skipped", "failed"):
            assert by_key[case.dicom_id]["kind"] == kind and by_key[case.dicom_id]["reason"] == reason, case.name
            assert manifest["splits"][case.split][kind][reason] >= 1
        if kind == "filtered":
            assert manifest["splits"][case.split]["filtered"][reason] == 1
        if case.note:
            assert manifest["splits"][case.split]["notes"][case.note] >= 1, case.name
    assert manifest["splits"]["train"]["notes"]["report_not_utf8"] == 1
    assert len(failures) == sum(c.expect.split(":")[0] in ("skipped", "failed") for c in cases)

    for case in cases:
        if case.expect != "written":
            continue
        sample = written[case.dicom_id]
        assert sorted(sample) == ["jpg", "json", "txt"]
        image = Image.open(io.BytesIO(sample["jpg"]))
        assert image.format == "JPEG" and image.mode == "L" and image.size == (SIZE, SIZE)
        meta = json.loads(sample["json"])
        assert tuple(meta) == JSON_FIELDS
        assert (meta["subject_id"], meta["study_id"], meta["dicom_id"]) == (case.subject_id, case.study_id, case.dicom_id)
        assert meta["view"] == case.view and meta["split"] == case.split
        assert len(meta["labels"]) == 14 and set(meta["labels"].values()) <= {1.0, 0.0, -1.0, None}
        assert sample["txt"].decode("utf-8").strip() and "\n" not in sample["txt"].decode()
    by_name = {c.name: written[c.dicom_id] for c in cases if c.expect == "written"}
    assert by_name["plain12"]["txt"] == b"No acute cardiopulmonary process."
    assert by_name["rle"]["txt"] == b"Small left pleural effusion, new since ___."
    assert by_name["not-utf8"]["txt"].decode() == "Stable nodule, caf\u00e9 sign."


def test_shards_hold_no_identifying_header_elements(dicom_run):
    """The DICOMs carry PatientName, PatientID, dates, institution, physician: none of it may
    reach a shard (raw bytes, so no decoder can hide it)."""
    blobs = [p.read_bytes() for p in dicom_run.rglob("*.tar")]
    assert blobs
    for blob in blobs:
        for marker in PHI_MARKERS:
            assert marker not in blob, marker
        assert b"SECRET" not in blob


def test_tar_headers_are_fixed(dicom_run):
    with tarfile.open(next((dicom_run / "train").glob("*.tar"))) as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o444)
            assert (member.uname, member.gname) == ("tier-openclip", "tier-openclip")


def test_open_clip_webdataset_pipeline_reads_the_shards(dicom_run):
    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset

    manifest = json.loads((dicom_run / "manifest.json").read_text())
    urls = str(dicom_run / manifest["splits"]["train"]["urls"])
    assert "{" in urls  # several shards, brace-expanded as --train-data takes them
    import torchvision.transforms as T

    preprocess = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor()])
    args = Namespace(train_data=urls, val_data=None, train_num_samples=None, dataset_resampled=False, seed=0,
                     train_data_upsampling_factors=None, batch_size=2, workers=0, world_size=1)  # fmt: skip
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("RN50"))
    assert data.dataloader.num_samples >= manifest["splits"]["train"]["written"]
    images_seen = 0
    for images_batch, texts in data.dataloader:
        assert images_batch.shape[1:] == (3, 32, 32) and texts.shape[0] == images_batch.shape[0]
        assert torch.allclose(images_batch[:, 0], images_batch[:, 1])  # grayscale decoded as RGB
        images_seen += images_batch.shape[0]
    assert images_seen >= manifest["splits"]["train"]["written"] - 1


def test_jpg_release_path(release, tmp_path):
    mimic, jpg, cases = release
    out = tmp_path / "out"
    assert run_cli(*mimic_args(mimic, jpg, out, "--workers", "1", "--format", "png", "--text", "impression-or-findings",
                               "--splits", "train", "test", "--views", "all", source="jpg")) == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "jpg" and set(manifest["splits"]) == {"train", "test"}
    written = read_shards(out / "train") | read_shards(out / "test")
    # The palette DICOM has a good JPG (the JPG release is already grayscale); the report
    # without impression is used through its findings; --views all keeps the lateral.
    expected = {c.dicom_id for c in cases if c.split in ("train", "test") and c.expect in (
        "written", "skipped:report_section_missing", "failed:photometric_unsupported", "filtered:view_not_selected")}  # fmt: skip
    assert set(written) == expected
    failed = manifest["splits"]["train"]["failed"]
    assert failed == {"image_blank": 1, "image_missing": 1, "image_unreadable": 2}  # garbage and truncated JPGs
    for sample in written.values():
        image = Image.open(io.BytesIO(sample["png"]))
        assert image.format == "PNG" and image.mode == "L" and image.size == (SIZE, SIZE)
    no_impression = next(c for c in cases if c.name == "no-impression")
    assert written[no_impression.dicom_id]["txt"].startswith(b"Right internal jugular line")


def test_reports_from_the_zip_give_the_same_shards(release, dicom_run, tmp_path):
    mimic, jpg, _ = release
    zipped = zip_reports(mimic, tmp_path / "zipped")
    assert not list((zipped / "files").rglob("*.txt"))
    out = tmp_path / "out"
    assert run_cli(*mimic_args(zipped, jpg, out, "--workers", "1")) == 0
    assert tree_bytes(out) == tree_bytes(dicom_run)


def test_two_workers_give_byte_identical_shards(release, dicom_run, tmp_path):
    mimic, jpg, _ = release
    out = tmp_path / "out"
    assert run_cli(*mimic_args(mimic, jpg, out, "--workers", "2")) == 0
    reference = tree_bytes(dicom_run)
    assert len([name for name in reference if name.endswith(".tar")]) >= 4
    assert tree_bytes(out) == reference
    assert (out / "failures.csv").read_bytes() == (dicom_run / "failures.csv").read_bytes()


def _subprocess_prep(argv: list[str], kill: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(tier_openclip.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    # killed_prep.py is `prep` with the shard writer patched to SIGKILL itself at `kill`
    program = [str(Path(__file__).with_name("killed_prep.py")), kill] if kill else ["-m", "tier_openclip.data_prep"]
    return subprocess.run([sys.executable, *program, *argv], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_killed_runs_resume_to_the_same_shards(release, dicom_run, tmp_path):
    """SIGKILL in the middle of writing a shard, then again right after a shard is finished:
    each rerun finishes with every sample exactly once, no truncated tar, finished shards kept
    as they were, and the result byte-identical to an uninterrupted run."""
    mimic, jpg, _ = release
    out = tmp_path / "out"
    argv = mimic_args(mimic, jpg, out, "--workers", "2")
    killed = _subprocess_prep(argv, kill="train-000001.tar:2")
    assert killed.returncode == -9, killed.stderr
    train = out / "train"
    assert (train / "train-000000.tar").is_file() and not (train / "train-000001.tar").exists()
    partial = train / ".train-000001.tar.partial"
    assert partial.is_file()
    with pytest.raises(tarfile.TarError):  # the partial really is cut mid-tar
        with tarfile.open(partial) as tar:
            tar.getmembers()
    first = (train / "train-000000.tar").stat()

    killed = _subprocess_prep(argv, kill="train-000002.tar:renamed")
    assert killed.returncode == -9, killed.stderr
    assert "verified and kept" in killed.stderr
    assert not partial.exists() and (train / "train-000002.tar").is_file()
    assert not (train / "sizes.json").exists() and not (out / "manifest.json").exists()
    kept = (train / "train-000000.tar").stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # not rewritten
    third = (train / "train-000002.tar").stat()

    finished = _subprocess_prep(argv, kill=None)
    assert finished.returncode == 0, finished.stderr
    kept = (train / "train-000002.tar").stat()
    assert (kept.st_ino, kept.st_mtime_ns) == (third.st_ino, third.st_mtime_ns)
    assert tree_bytes(out) == tree_bytes(dicom_run)
    assert not list(out.rglob("*.partial"))
    manifest, reference = (json.loads((d / "manifest.json").read_text()) for d in (out, dicom_run))
    assert manifest["splits"] == reference["splits"]
    assert (out / "failures.csv").read_bytes() == (dicom_run / "failures.csv").read_bytes()


def test_damaged_finished_shard_is_rewritten(release, dicom_run, tmp_path):
    mimic, jpg, _ = release
    out = tmp_path / "out"
    argv = mimic_args(mimic, jpg, out, "--workers", "1")
    assert run_cli(*argv) == 0
    victim = out / "train" / "train-000001.tar"
    victim.write_bytes(victim.read_bytes()[:700])  # truncated behind the run's back
    assert run_cli(*argv) == 0
    assert tree_bytes(out) == tree_bytes(dicom_run)


def test_a_crashing_worker_fails_its_sample_and_the_run_goes_on(tmp_path):
    from tier_openclip.data_prep.mimic import SampleTask

    keys = ["a", "b", "die", "c", "d", "e", "f"]
    tasks = [SampleTask(key, "", "", b"", 1, 1) for key in keys]
    plans = shards.plan_shards("s", tasks, 3, lambda chunk: ",".join(task.key for task in chunk))
    records = shards.write_shards(tmp_path, plans, render_or_die, workers=2, progress=False, log=print, sample_timeout=2)
    assert [r.keys for r in records.values()] == [["a", "b"], ["c", "d", "e"], ["f"]]
    assert [(key, reason) for key, reason, _ in records["s-000000.tar"].failures] == [("die", "worker_crashed")]
    assert read_shards(tmp_path / "s")["e"] == {"txt": b"e"}


def test_a_rerun_retries_the_samples_whose_worker_crashed(tmp_path):
    """Issue 22, case 3: a worker_crashed sample is not lost for good; only its shard is rendered
    again, and the result is byte for byte a run without the crash."""
    from tier_openclip.data_prep.mimic import SampleTask

    tasks = [SampleTask(key, "", "", b"", 1, 1) for key in ["a", "b", "die", "c", "d", "e", "f"]]
    plans = shards.plan_shards("s", tasks, 3, lambda chunk: ",".join(task.key for task in chunk))
    logged: list[str] = []

    def write(out, render):
        logged.clear()
        return shards.write_shards(out, plans, render, workers=2, progress=False, log=logged.append, sample_timeout=2)

    out, clean = tmp_path / "out", tmp_path / "clean"
    write(out, render_or_die)
    crashed = (out / "s" / "s-000000.tar").read_bytes()
    write(out, render_or_die)  # the crash again: retried, failed again, the same bytes
    assert logged[0] == "rewriting s/s-000000.tar: retrying 1 sample(s) whose worker crashed or timed out"
    assert (out / "s" / "s-000000.tar").read_bytes() == crashed
    kept = {name: (out / "s" / name).stat().st_ino for name in ("s-000001.tar", "s-000002.tar")}
    records = write(out, render_text)  # the worker survives this time
    assert records["s-000000.tar"].keys == ["a", "b", "die"] and records["s-000000.tar"].failures == []
    assert {name: (out / "s" / name).stat().st_ino for name in kept} == kept  # the other shards were kept
    write(clean, render_text)
    assert tree_bytes(out / "s") == tree_bytes(clean / "s")
    write(out, render_text)
    assert not [line for line in logged if line.startswith("rewriting")]  # nothing left to retry


def test_user_errors_say_what_to_do(release, tmp_path, capsys):
    mimic, jpg, _ = release
    assert run_cli("mimic-cxr", "--mimic-root", str(tmp_path), "--out", str(tmp_path / "o")) == 2
    assert "has no files/ folder" in capsys.readouterr().err
    assert run_cli("mimic-cxr", "--mimic-root", str(mimic), "--out", str(tmp_path / "o")) == 2
    error = capsys.readouterr().err
    assert "mimic-cxr-2.0.0-split.csv.gz" in error and "--metadata-dir" in error
    assert run_cli("mimic-cxr", "--mimic-root", str(mimic), "--metadata-dir", str(jpg), "--out", str(tmp_path / "o"),
                   "--splits", "train", "dev") == 2  # fmt: skip
    assert "dev" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a comma list would match no split: refused by the parser
        run_cli("mimic-cxr", "--mimic-root", str(mimic), "--out", str(tmp_path / "o"), "--views", "PA,AP")
    assert "separate words" in capsys.readouterr().err
    out = tmp_path / "locked"
    with shards.run_lock(out / shards.STATE_DIR):  # another run holds --out
        assert run_cli(*mimic_args(mimic, jpg, out)) == 2
    assert "another prep run is writing to" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["--help"], ["mimic-cxr", "--help"], ["chexpert", "--help"], ["padchest", "--help"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(command)
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Evaluation sets


def test_chexpert_eval_set(tmp_path):
    csv_path = build_chexpert(tmp_path / "chexpert")
    out = tmp_path / "out"
    assert run_cli("chexpert", "--csv", str(csv_path), "--image-root", str(tmp_path / "chexpert"), "--out", str(out),
                   "--image-size", "48", "--workers", "1", "--quiet") == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "tier-openclip-eval/1" and meta["dataset"] == "chexpert"
    assert len(meta["labels"]) == 14 and meta["competition_labels"] == [
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]  # fmt: skip
    assert meta["images"] == 2 and meta["skipped"] == {"view_not_selected": 1} and meta["failed"] == {"image_missing": 1}
    assert meta["split"] == "valid"
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert list(rows[0]) == ["image", *meta["labels"]]
    assert [r["image"] for r in rows] == ["images/valid/patient00001/study1/view1_frontal.png",
                                          "images/valid/patient00002/study1/view1_frontal.png"]  # fmt: skip
    assert (rows[0]["No Finding"], rows[0]["Cardiomegaly"], rows[0]["Lung Opacity"]) == ("1", "1", "")  # -1.0 -> blank
    assert rows[1]["Cardiomegaly"] == ""  # blank stays blank
    assert meta["counts"]["Lung Opacity"] == {"positive": 0, "negative": 1, "unknown": 1}
    for row in rows:
        image = Image.open(out / row["image"])
        assert image.format == "PNG" and image.mode == "L" and image.size == (48, 48)


def build_chexpert_test_labels(root: Path) -> Path:
    """CheXlocalize's ``CheXpert/`` folder: ``test/patientN/studyM/viewK_*.jpg`` and
    ``test_labels.csv`` with columns Path and the 14 labels (no view columns), Paths relative to
    that folder. Cells as 0/1 and as 0.0/1.0. Returns the CSV."""
    from data_prep_fixtures import CHEXPERT_HEADER

    labels = [c for c in CHEXPERT_HEADER if c not in ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")]
    specs = [
        ("test/patient64741/study1/view1_frontal.jpg", ["1", "0", "1"] + ["0"] * 11),
        ("test/patient64741/study1/view2_lateral.jpg", ["1", "0", "1"] + ["0"] * 11),
        ("test/patient64742/study1/view1_frontal.jpg", ["0.0", "1.0", "0.0"] + ["1.0"] * 11),
    ]
    for i, (path, _) in enumerate(specs):
        target = root / "CheXpert" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(90, 80, 60 + i, 255).astype(np.uint8), mode="L").save(target)
    csv_path = root / "CheXpert" / "test_labels.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Path", *labels])
        writer.writerows([path, *cells] for path, cells in specs)
    return csv_path


def test_chexpert_test_set_in_chexlocalize_layout(tmp_path):
    csv_path = build_chexpert_test_labels(tmp_path / "chexlocalize")
    out, everything = tmp_path / "test", tmp_path / "test-all-views"
    for folder, extra in ((out, []), (everything, ["--all-views"])):
        assert run_cli("chexpert", "--csv", str(csv_path), "--image-root", str(csv_path.parent), "--out", str(folder),
                       "--image-size", "32", "--workers", "1", "--quiet", *extra) == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "chexpert" and meta["split"] == "test" and len(meta["labels"]) == 14
    assert meta["images"] == 2 and meta["skipped"] == {"view_not_selected": 1} and meta["failed"] == {}
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert [r["image"] for r in rows] == ["images/test/patient64741/study1/view1_frontal.png",
                                          "images/test/patient64742/study1/view1_frontal.png"]  # fmt: skip
    assert [(r["No Finding"], r["Enlarged Cardiomediastinum"], r["Cardiomegaly"], r["Support Devices"]) for r in rows] == [
        ("1", "0", "1", "0"), ("0", "1", "0", "1")]  # fmt: skip
    assert json.loads((everything / "meta.json").read_text())["images"] == 3  # the lateral too
    from tier_openclip.data_prep.eval_layout import read_eval_set

    assert read_eval_set(out).split == "test"


def test_padchest_eval_set(tmp_path):
    csv_path = build_padchest(tmp_path / "padchest")
    out = tmp_path / "out"
    assert run_cli("padchest", "--csv", str(csv_path), "--image-root", str(tmp_path / "padchest" / "images"),
                   "--out", str(out), "--image-size", "48", "--workers", "2", "--quiet") == 0  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["labels"] == ["cardiomegaly", "normal", "pleural effusion"]
    assert meta["skipped"] == {"labelled_exclude": 1, "labels_invalid": 1, "not_physician_labelled": 1, "view_not_selected": 1}
    rows = list(csv.DictReader(open(out / "labels.csv")))
    assert [(r["image"], r["cardiomegaly"], r["normal"], r["pleural effusion"]) for r in rows] == [
        ("images/0/img1.png", "1", "0", "1"), ("images/0/img2.png", "0", "1", "0"), ("images/2/img5.png", "1", "0", "1")]  # fmt: skip
    image = Image.open(out / "images/0/img1.png")
    assert image.mode == "L" and image.size == (48, 48) and np.asarray(image).std() > 20
    source = tmp_path / "padchest" / "images" / "0" / "img1.png"
    sixteen = np.asarray(Image.open(source), dtype=np.float64)
    assert Image.open(source).mode.startswith("I") and sixteen.max() > 255  # really 16-bit
    gray = np.asarray(images.png_to_gray(source).image, dtype=np.float64)
    assert np.abs(gray - (sixteen - sixteen.min()) / np.ptp(sixteen) * 255).max() <= 0.5  # min-max to 8 bits
    labels_bytes = (out / "labels.csv").read_bytes() + (out / "meta.json").read_bytes()
    assert b"PID-SECRET" not in labels_bytes and b"19991231" not in labels_bytes


# ---------------------------------------------------------------------------------------------
# The shared contracts: one CheXpert label parser, one atomic writer


@pytest.mark.parametrize("cell, value", [("1", 1.0), ("1.0", 1.0), (" 0 ", 0.0), ("0.0", 0.0), ("-1", -1.0),
                                         ("-1.0", -1.0), ("", None), ("  ", None)])
def test_chexpert_label_cells_parse_the_same_for_every_reader(cell, value):
    import math

    from tier_openclip.data_prep.chexpert import parse_chexpert_label
    from tier_openclip.data_prep.eval_layout import parse_label_cell
    from tier_openclip.data_prep.eval_sets import parse_chexpert_value
    from tier_openclip.data_prep.mimic import load_labels

    assert parse_chexpert_label(cell) == value
    row = {"subject_id": "1", "study_id": "2", "Edema": cell}
    assert load_labels([row])[(1, 2)]["Edema"] == value  # training labels keep -1 (uncertain)
    assert parse_chexpert_value(cell) == (None if value in (None, -1.0) else int(value))  # eval sets: -1 -> blank
    if value == -1.0:  # the evaluator refuses what prep should have mapped
        with pytest.raises(ValueError, match="Uncertain CheXpert labels"):
            parse_label_cell(cell, "here")
    else:
        parsed = parse_label_cell(cell, "here")
        assert math.isnan(parsed) if value is None else parsed == value


@pytest.mark.parametrize("cell", ["2", "0.5", "x", "nan", "inf", "1 0"])
def test_chexpert_label_cells_that_are_no_label_are_refused(cell):
    from tier_openclip.data_prep.chexpert import parse_chexpert_label
    from tier_openclip.data_prep.eval_layout import parse_label_cell

    with pytest.raises(ValueError, match=f"unexpected CheXpert label value '{cell}'"):
        parse_chexpert_label(cell)
    with pytest.raises(ValueError, match=f"here: '{cell}' is not a label"):
        parse_label_cell(cell, "here")


def test_the_atomic_writer_writes_the_formats_byte_for_byte_and_never_half_a_file(tmp_path):
    from tier_openclip.data_prep.atomic import write_csv_atomic, write_json_atomic

    path = tmp_path / "deep" / "t.csv"
    write_csv_atomic(path, ["a", "b"], [[1, "x,y"], [None, 'say "hi"']])
    assert path.read_bytes() == b'a,b\r\n1,"x,y"\r\n,"say ""hi"""\r\n'  # the csv module's dialect, CRLF
    write_csv_atomic(path, ["a"], [["\u00e9"]], lineterminator="\n")
    assert path.read_bytes() == "a\n\u00e9\n".encode("utf-8")

    def broken_rows():
        yield ["fine"]
        raise RuntimeError("the source died")

    with pytest.raises(RuntimeError):
        write_csv_atomic(path, ["a"], broken_rows())
    assert path.read_bytes() == "a\n\u00e9\n".encode("utf-8")  # the old file, whole
    write_json_atomic(tmp_path / "m.json", {"b": [1, 2], "a": "\u00e9"})
    assert (tmp_path / "m.json").read_bytes() == b'{\n "b": [\n  1,\n  2\n ],\n "a": "\\u00e9"\n}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "m.json", "t.csv"]  # no temporary left
