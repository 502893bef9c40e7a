"""Issue 11, "Data and files": hostile or damaged inputs to `tier-openclip prep` and to the
evaluation-set reader. Each case asserts the exact outcome: the row's named reason, the file
left untouched, nothing written outside its folder, the message and exit status.

The releases are tiny (data_prep_fixtures.build_tiny_mimic: one 20x24 DICOM per id).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import tarfile
import tempfile
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from data_prep_fixtures import (
    CHEXPERT_HEADER,
    PADCHEST_HEADER,
    REPORT_NORMAL,
    REPORT_NORMAL_BYTES,
    build_chexpert,
    build_tiny_mimic,
    dicom_dataset,
    id_path_is_inside,
    smooth_image,
    study_dir,
    write_csv,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tier_openclip.data_prep import cli, images, shards
from tier_openclip.data_prep.errors import PrepError
from tier_openclip.data_prep.mimic import MimicOptions, prepare_mimic

SIZE = 16
MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.(jpg|png|json|txt)")  # the test's own rule


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tier-openclip")
    cli.add_prep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prep", *argv])
    return args.func(args)


def prep_mimic(mimic: Path, meta: Path, out: Path, *extra: str) -> int:
    return run_cli("mimic-cxr", "--mimic-root", str(mimic), "--metadata-dir", str(meta), "--out", str(out),
                   "--image-size", str(SIZE), "--shard-size", "2", "--workers", "1", "--sample-timeout", "60", "--quiet",
                   *extra)  # fmt: skip


def failures(out: Path) -> list[dict[str, str]]:
    with open(out / "failures.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def member_names(split_dir: Path) -> list[str]:
    names = []
    for path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            names += [member.name for member in tar.getmembers()]
    return names


def assert_members_safe(split_dir: Path) -> None:
    """Every member is <key>.<ext> by the test's own rule, and tarfile's extraction filter
    (Python's guard against members outside the destination) accepts it."""
    for path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                assert MEMBER.fullmatch(member.name), member.name
                tarfile.data_filter(member, str(split_dir / "extract"))  # raises on an escaping member


def open_clip_samples(split_dir: Path) -> list[dict]:
    """The samples open_clip's training reader yields from a split's shards: its own
    tarfile_to_samples_nothrow (key grouping), its caption/image filter and the decoder."""
    import webdataset as wds
    from open_clip_train.data import filter_no_caption_or_no_image, log_and_continue, tarfile_to_samples_nothrow

    urls = [str(p) for p in sorted(split_dir.glob("*.tar"))]
    if not urls:
        return []
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), tarfile_to_samples_nothrow, wds.select(filter_no_caption_or_no_image),
        wds.decode("pilrgb", handler=log_and_continue),
    )  # fmt: skip
    samples = list(pipeline)
    for sample in samples:  # webdataset's decoder has parsed the json already
        assert isinstance(sample["json"], dict)
    return samples


def open_clip_dataset_count(out: Path, split: str = "train") -> tuple[int, int]:
    """(sizes.json's count as open_clip reads it, samples open_clip's get_wds_dataset yields)."""
    import open_clip
    import torchvision.transforms as T
    from open_clip_train.data import get_dataset_size, get_wds_dataset

    manifest = json.loads((out / "manifest.json").read_text())
    urls = str(out / manifest["splits"][split]["urls"])
    size, _ = get_dataset_size(urls)
    args = Namespace(val_data=urls, val_num_samples=None, batch_size=1, workers=0, world_size=1)
    data = get_wds_dataset(args, T.Compose([T.Resize(8), T.ToTensor()]), is_train=False,
                           tokenizer=open_clip.get_tokenizer("RN50"))  # fmt: skip
    return size, sum(images.shape[0] for images, _ in data.dataloader)


def digest_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# 1. Path escapes


@pytest.mark.parametrize("source", ["dicom", "jpg"])
def test_dicom_id_escaping_its_study_folder_is_skipped_and_nothing_outside_is_read(tmp_path, source):
    outside = tmp_path / "outside"
    outside.mkdir()
    jpg = source == "jpg"
    extension = "jpg" if jpg else "dcm"
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["good"], jpg=jpg)
    victim = outside / f"x.{extension}"
    victim.write_bytes(next(mimic.rglob(f"good.{extension}")).read_bytes())  # a readable image outside the tree
    # From files/pXX/pXXXXXXXX/sXXXXXXXX the relative id climbs 4 folders to the release, 2 more to tmp_path.
    climbing, absolute = "../../../../../../outside/x", str(outside / "x")
    study = study_dir(mimic, 10000000, 50000000)
    assert (study / f"{climbing}.{extension}").resolve() == victim.resolve()  # the id really names the victim
    rows = [["good", 50000000, 10000000, "train"], [climbing, 50000000, 10000000, "train"], [absolute, 50000000, 10000000, "train"]]
    write_csv(meta / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], rows)
    write_csv(meta / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
              [[r[0], 10000000, 50000000, "PA"] for r in rows])  # fmt: skip
    out = tmp_path / "out"
    extra = ("--image-root", str(mimic)) if jpg else ()
    assert prep_mimic(mimic, meta, out, "--splits", "train", *extra) == 0

    reasons = {row["dicom_id"]: (row["kind"], row["reason"]) for row in failures(out)}
    assert reasons == {climbing: ("skipped", "unsafe_path"), absolute: ("skipped", "unsafe_path")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["skipped"] == {"unsafe_path": 2} and manifest["splits"]["train"]["written"] == 1
    assert member_names(out / "train") == ["good.jpg", "good.json", "good.txt"]
    assert_members_safe(out / "train")
    assert sorted(p.name for p in outside.iterdir()) == [f"x.{extension}"]


def test_chexpert_paths_outside_the_image_root_write_nothing_outside_out(tmp_path):
    root = tmp_path / "chexpert"
    csv_path = build_chexpert(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(smooth_image(40, 40, 1, 255).astype(np.uint8), mode="L").save(elsewhere / "evil.jpg")
    before = digest_tree(tmp_path)
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    template = rows[1]
    absolute = [str(elsewhere / "evil.jpg"), *template[1:]]
    climbing = ["CheXpert-v1.0/../../elsewhere/evil.jpg", *template[1:]]
    hostile = tmp_path / "hostile.csv"
    write_csv(hostile, CHEXPERT_HEADER, [*rows[1:], absolute, climbing])
    out = tmp_path / "out"
    assert run_cli("chexpert", "--csv", str(hostile), "--image-root", str(root), "--out", str(out),
                   "--image-size", "32", "--workers", "1", "--quiet") == 0  # fmt: skip

    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"unsafe_path": 2, "view_not_selected": 1} and meta["images"] == 2
    skipped = {row["source"]: row["reason"] for row in failures(out) if row["kind"] == "skipped"}
    assert skipped == {absolute[0]: "unsafe_path", climbing[0]: "unsafe_path"}
    after = digest_tree(tmp_path)
    assert {name: h for name, h in after.items() if not name.startswith(("out/", "hostile.csv"))} == before
    assert sorted(elsewhere.iterdir()) == [elsewhere / "evil.jpg"]


def _padchest_row(image_id: str, image_dir: str) -> list[str]:
    row = {name: "" for name in PADCHEST_HEADER}
    row.update(ImageID=image_id, ImageDir=image_dir, Projection="PA", MethodLabel="Physician", Labels="['normal']")
    return [row[name] for name in PADCHEST_HEADER]


def test_padchest_image_dir_escaping_images_leaves_the_source_untouched(tmp_path):
    image_root = tmp_path / "padchest" / "images"
    (image_root / "0").mkdir(parents=True)
    source = image_root / "0" / "img1.png"
    Image.fromarray(smooth_image(60, 50, 2, 60000, 3000).astype(np.uint16)).save(source)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(smooth_image(60, 50, 3, 60000, 3000).astype(np.uint16)).save(outside / "img2.png")
    before = digest_tree(tmp_path)
    csv_path = write_csv(tmp_path / "padchest.csv", PADCHEST_HEADER, [
        _padchest_row("img1.png", "0"),
        _padchest_row("img1.png", str(image_root / "0")),  # absolute: today's run overwrote the source with its output
        _padchest_row("img2.png", "../../outside"),
        _padchest_row("img2.png", "0/../../../outside"),
    ])  # fmt: skip
    out = tmp_path / "out"
    assert run_cli("padchest", "--csv", str(csv_path), "--image-root", str(image_root), "--out", str(out),
                   "--image-size", "32", "--workers", "1", "--quiet") == 0  # fmt: skip

    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"unsafe_path": 3} and meta["images"] == 1
    assert [row["image"] for row in csv.DictReader(open(out / "labels.csv"))] == ["images/0/img1.png"]
    after = digest_tree(tmp_path)
    assert {name: h for name, h in after.items() if not name.startswith(("out/", "padchest.csv"))} == before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["images/0/img1.png"]


@pytest.mark.parametrize("image", ["../secret.png", "/SECRET", "images/../../secret.png", ""])
def test_evaluation_refuses_image_paths_outside_its_folder(tmp_path, image):
    from tier_openclip.evaluation.zeroshot import read_eval_set

    secret = tmp_path / "secret.png"
    Image.new("L", (8, 8), 100).save(secret)
    image = image.replace("/SECRET", str(secret))
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    Image.new("L", (8, 8), 50).save(folder / "images" / "a.png")
    write_csv(folder / "labels.csv", ["image", "Edema"], [["images/a.png", 1], [image, 0]])
    with pytest.raises(ValueError, match=r"labels\.csv row 3: image .* must name a file inside"):
        read_eval_set(folder)


def test_evaluation_still_reads_a_good_set(tmp_path):
    from tier_openclip.evaluation.zeroshot import read_eval_set

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("L", (8, 8), 50).save(folder / "images" / f"{name}.png")
    write_csv(folder / "labels.csv", ["image", "Edema"], [["images/a.png", 1], ["./images/b.png", 0]])
    eval_set = read_eval_set(folder)
    assert eval_set.images == [Path(os.path.abspath(folder / "images" / name)) for name in ("a.png", "b.png")]


# ---------------------------------------------------------------------------------------------
# 2. Keys


def test_dotted_colliding_and_duplicate_ids_reach_open_clip_once_each(tmp_path):
    ids = ["1.2.840.113619.2.55.3", "a.b", "a_b", "dup", "dup", "plain-id"]
    mimic, meta, created = build_tiny_mimic(tmp_path / "release", ids)
    assert all(created.values())
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 0

    assert_members_safe(out / "train")
    samples = open_clip_samples(out / "train")
    originals = sorted(sample["json"]["dicom_id"] for sample in samples)
    assert originals == sorted(set(ids))  # each id once, by its original name
    keys = [sample["__key__"] for sample in samples]
    assert len(set(keys)) == len(keys) and "plain-id" in keys and "a_b" in keys  # safe ids keep their name
    for sample in samples:
        assert sample["jpg"].size == (SIZE, SIZE) and sample["txt"] == "No acute cardiopulmonary process."
    assert [(r["dicom_id"], r["kind"], r["reason"]) for r in failures(out)] == [("dup", "skipped", "duplicate_id")]
    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sum(sizes.values()) == len(samples) == 5
    assert open_clip_dataset_count(out) == (5, 5)


# Leading/trailing spaces are not in the alphabet: CSV cells are stripped (documented).
ID_ALPHABET = st.sampled_from(["a", "Z", "7", "-", "_", ".", "..", "/", "é", "\u4e2d", "\0", "\\", "%", "a b"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(ID_ALPHABET, min_size=1, max_size=6).map("".join), min_size=1, max_size=4))
def test_property_any_ids_give_safe_members_and_every_sample_reaches_open_clip(ids):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        mimic, meta, created = build_tiny_mimic(root / "release", ids)
        out = root / "out"
        assert prep_mimic(mimic, meta, out, "--splits", "train") == 0
        assert_members_safe(out / "train")
        samples = open_clip_samples(out / "train")
        written = sorted(sample["json"]["dicom_id"] for sample in samples)
        assert written == sorted(i for i, made in created.items() if made)  # every image made reaches open_clip
        sizes = json.loads((out / "train" / "sizes.json").read_text())
        assert sum(sizes.values()) == len(samples)
        # Every other row has its reason, by the test's own oracle.
        expected, seen = [], set()
        for i, dicom_id in enumerate(ids):
            study = study_dir(mimic, 10000000 + i, 50000000 + i)
            if dicom_id in seen:
                expected.append((dicom_id, "duplicate_id"))
            elif not id_path_is_inside(study, dicom_id):
                expected.append((dicom_id, "unsafe_path"))
            elif not created[dicom_id]:  # the file system refused the name (a file where a folder must be)
                expected.append((dicom_id, "image_missing|image_unreadable"))
            seen.add(dicom_id)
        got = [(row["dicom_id"], row["reason"]) for row in failures(out)]
        got = [(i, "image_missing|image_unreadable" if r in ("image_missing", "image_unreadable") else r) for i, r in got]
        assert sorted(got) == sorted(expected)


# ---------------------------------------------------------------------------------------------
# 3. Never delete what the tool did not write


def test_mimic_removes_only_shards_its_records_name(tmp_path):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a", "b", "c", "d", "e"])
    out = tmp_path / "out"
    assert run_cli("mimic-cxr", "--mimic-root", str(mimic), "--metadata-dir", str(meta), "--out", str(out),
                   "--image-size", str(SIZE), "--shard-size", "1", "--workers", "1", "--quiet", "--splits", "train") == 0  # fmt: skip
    assert len(list((out / "train").glob("*.tar"))) == 5
    foreign = out / "train" / "train-000099.tar"
    foreign.write_bytes(b"the user's own file")
    foreign_partial = out / "train" / ".train-000042.tar.partial"
    foreign_partial.write_bytes(b"not ours either")
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 0  # shard size 2: 3 shards planned
    names = sorted(p.name for p in (out / "train").iterdir())
    assert names == [".train-000042.tar.partial", "sizes.json", "train-000000.tar", "train-000001.tar",
                     "train-000002.tar", "train-000099.tar"]  # ours beyond the plan removed, the user's kept  # fmt: skip
    assert foreign.read_bytes() == b"the user's own file" and foreign_partial.read_bytes() == b"not ours either"


def test_a_planned_shard_name_held_by_a_foreign_file_stops_the_run(tmp_path, capsys):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a", "b"])
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 0
    shard = out / "train" / "train-000000.tar"
    (out / shards.STATE_DIR / "train-000000.json").unlink()  # no record: not ours any more
    shard.write_bytes(b"someone else's tar")
    capsys.readouterr()
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 2
    error = capsys.readouterr().err
    assert f"tier-openclip prep: {shard} exists but no record" in error and "move it away" in error
    assert [line for line in error.splitlines() if line.startswith("tier-openclip prep:")] == error.splitlines()[-1:]
    assert shard.read_bytes() == b"someone else's tar"


@pytest.mark.parametrize("where", ["mimic-root", "image-root", "metadata-dir"])  # metadata-dir: issue 22, case 6
def test_out_inside_an_input_root_is_refused(tmp_path, capsys, where):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"])
    image_root = tmp_path / "jpg"
    (image_root / "files").mkdir(parents=True)
    before = digest_tree(tmp_path)
    out = {"mimic-root": mimic / "files", "image-root": image_root / "files", "metadata-dir": meta}[where] / "shards"
    extra = ("--image-root", str(image_root)) if where == "image-root" else ()
    assert prep_mimic(mimic, meta, out, *extra) == 2
    error = capsys.readouterr().err
    assert f"--out {out} is inside --{where}" in error and error.count("\n") == 1
    assert digest_tree(tmp_path) == before and not out.exists()


def test_a_non_empty_out_that_prep_did_not_make_is_refused(tmp_path, capsys):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text("my notes")
    assert prep_mimic(mimic, meta, out) == 2
    assert "is not empty and was not written by tier-openclip prep" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] and (out / "manifest.json").read_text() == "my notes"


def test_eval_set_removes_only_images_it_wrote_and_never_replaces_others(tmp_path):
    root = tmp_path / "chexpert"
    csv_path = build_chexpert(root)
    out = tmp_path / "out"
    argv = ["chexpert", "--image-root", str(root), "--out", str(out), "--image-size", "32", "--workers", "1", "--quiet"]
    assert run_cli(*argv, "--csv", str(csv_path)) == 0
    first = out / "images/valid/patient00001/study1/view1_frontal.png"
    second = out / "images/valid/patient00002/study1/view1_frontal.png"
    assert first.is_file() and second.is_file()
    mine = out / "images" / "valid" / "mine.png"
    mine.write_bytes(b"the user's own file")
    lateral = out / "images/valid/patient00002/study1/view2_lateral.png"  # planned by --all-views, not ours
    lateral.write_bytes(b"also the user's")
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    smaller = write_csv(tmp_path / "smaller.csv", rows[0], rows[2:])  # patient00001 dropped
    assert run_cli(*argv, "--csv", str(smaller), "--all-views") == 0

    assert not first.exists()  # ours, no longer listed: removed
    assert second.is_file() and mine.read_bytes() == b"the user's own file" and lateral.read_bytes() == b"also the user's"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["skipped"] == {"output_exists": 1} and meta["images"] == 1
    assert [r["image"] for r in csv.DictReader(open(out / "labels.csv"))] == ["images/valid/patient00002/study1/view1_frontal.png"]


@pytest.mark.parametrize("dataset", ["chexpert", "padchest"])
def test_eval_sets_take_the_run_lock(tmp_path, capsys, dataset):
    root = tmp_path / "in"
    root.mkdir()
    csv_path = write_csv(tmp_path / "x.csv", CHEXPERT_HEADER if dataset == "chexpert" else PADCHEST_HEADER,
                         [["CheXpert-v1.0/valid/p/s/view1_frontal.jpg"] + [""] * (len(CHEXPERT_HEADER) - 1)]
                         if dataset == "chexpert" else [_padchest_row("img1.png", "0")])  # fmt: skip
    out = tmp_path / "out"
    with shards.run_lock(out / shards.STATE_DIR):
        assert run_cli(dataset, "--csv", str(csv_path), "--image-root", str(root), "--out", str(out), "--quiet") == 2
    assert "another prep run is writing to" in capsys.readouterr().err
    assert sorted(p.name for p in out.rglob("*")) == [shards.STATE_DIR, "lock"]


@pytest.mark.parametrize("layout", ["out-inside-root", "root-inside-out"])
def test_eval_set_input_and_output_folders_must_not_overlap(tmp_path, capsys, layout):
    root = tmp_path / "chexpert"
    csv_path = build_chexpert(root)
    before = digest_tree(tmp_path)
    if layout == "out-inside-root":
        out, image_root = root / "CheXpert-v1.0" / "eval", root
    else:  # the source images are where the outputs would go
        out, image_root = tmp_path, root
    assert run_cli("chexpert", "--csv", str(csv_path), "--image-root", str(image_root), "--out", str(out), "--quiet") == 2
    error = capsys.readouterr().err
    assert "is inside" in error and error.count("\n") == 1
    assert digest_tree(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 4. Resource guards


def _mimic_with_image(tmp_path: Path, data: bytes) -> tuple[Path, Path]:
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["big"], images={"big": data})
    return mimic, meta


def test_a_small_file_declaring_a_huge_image_fails_before_decoding(tmp_path):
    """The issue's case: a 70 KB deflated DICOM that decodes to 6000 x 6000 pixels."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dicom_dataset(np.zeros((8, 8)), bits_stored=12)
    ds.Rows = ds.Columns = 6000
    ds.PixelData = np.zeros((6000, 6000), np.uint16).tobytes()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    assert len(buffer.getvalue()) < 100_000
    mimic, meta = _mimic_with_image(tmp_path, buffer.getvalue())
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 0
    [row] = failures(out)
    assert (row["kind"], row["reason"]) == ("failed", "image_too_large")
    assert "6000 x 6000 pixels" in row["detail"] and "--max-megapixels" in row["detail"]


def test_the_pixel_limit_is_an_option(tmp_path):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"])  # 20 x 24 = 480 pixels
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out, "--splits", "train", "--max-megapixels", "0.0004") == 0
    assert [(r["reason"], "480" in r["detail"] or "0.00048" in r["detail"]) for r in failures(out)] == [("image_too_large", True)]
    out2 = tmp_path / "out2"
    assert prep_mimic(mimic, meta, out2, "--splits", "train", "--max-megapixels", "0.0005") == 0
    assert failures(out2) == [] and json.loads((out2 / "manifest.json").read_text())["totals"]["written"] == 1


def test_a_header_of_65535_squared_fails_without_allocating(tmp_path):
    ds = dicom_dataset(smooth_image(16, 16, 4, 4095), bits_stored=12)
    ds.Rows = ds.Columns = 65535
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(images.ImageError) as error:
        images.dicom_to_uint8(path)
    assert error.value.reason == "image_too_large" and "65535 x 65535" in error.value.detail


def test_a_deflated_stream_is_not_inflated_past_the_limit(tmp_path):
    """A small header (10 x 10 pixels) whose deflated dataset inflates to 20 MB (a long private
    element): the inflation stops at what an image within the limit can need."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dicom_dataset(smooth_image(10, 10, 5, 4095), bits_stored=12)
    ds.add_new(0x00090010, "LO", "TIER TEST")  # private creator
    ds.add_new(0x00091010, "OB", bytes(20 << 20))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "long.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(images.ImageError) as error:
        images.dicom_to_uint8(path, max_pixels=100)
    assert error.value.reason == "image_too_large" and "inflates to more than" in error.value.detail
    assert images.dicom_to_uint8(path).image.size == (10, 10)  # within the default limit it decodes


def test_pil_images_are_held_to_the_same_limit(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(smooth_image(30, 40, 6, 255).astype(np.uint8), mode="L").save(path)
    for read in (lambda: images.png_to_gray(path, max_pixels=1000), lambda: images.jpeg_to_gray(path, 16, max_pixels=1000)):
        with pytest.raises(images.ImageError) as error:
            read()
        assert error.value.reason == "image_too_large"
    assert images.png_to_gray(path, max_pixels=1200).image.size == (40, 30)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--image-size", "8", "must be between 16 and 4096"),
    ("--image-size", "5000", "must be between 16 and 4096"),
    ("--sample-timeout", "inf", "must be a number of seconds above 0"),
    ("--sample-timeout", "nan", "must be a number of seconds above 0"),
    ("--sample-timeout", "0", "must be a number of seconds above 0"),
    ("--sample-timeout", "1e300", "must be a number of seconds above 0"),
    ("--max-megapixels", "0", "must be a positive number of megapixels"),
    ("--max-megapixels", "inf", "must be a positive number of megapixels"),
])  # fmt: skip
@pytest.mark.parametrize("command", ["mimic-cxr", "chexpert", "padchest"])
def test_resource_options_are_bounded(tmp_path, capsys, command, flag, value, message):
    argv = ["--mimic-root", str(tmp_path)] if command == "mimic-cxr" else ["--csv", "x", "--image-root", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, *argv, "--out", str(tmp_path / "out"), flag, value)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {flag}: {message}" in error and "Traceback" not in error


@pytest.mark.parametrize("timeout", [math.inf, math.nan, 0.0, -1.0])
def test_the_python_api_checks_the_timeout_too(tmp_path, timeout):
    with pytest.raises(PrepError, match="--sample-timeout must be"):
        prepare_mimic(MimicOptions(mimic_root=tmp_path, out=tmp_path / "out", sample_timeout=timeout), progress=False)


def test_nul_bytes_are_stripped_from_captions(tmp_path):
    report = REPORT_NORMAL.replace("No acute", "No\0 acute\0\0").encode()
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"], report=report)
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 0
    [sample] = open_clip_samples(out / "train")
    assert sample["txt"] == "No acute cardiopulmonary process."


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_utf16_and_bom_reports_and_csvs_are_read(tmp_path, encoding):
    if encoding == "utf-16-be":
        report = b"\xfe\xff" + REPORT_NORMAL.encode("utf-16-be")
        csv_encoding = "utf-16"
    else:
        report, csv_encoding = REPORT_NORMAL.encode(encoding), encoding
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"], report=report, csv_encoding=csv_encoding)
    assert (meta / "mimic-cxr-2.0.0-split.csv").read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff", b"\xef\xbb")
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out, "--splits", "train") == 0
    [sample] = open_clip_samples(out / "train")
    assert sample["txt"] == "No acute cardiopulmonary process." and sample["json"]["dicom_id"] == "a"


def test_a_utf16_chexpert_csv_is_read(tmp_path):
    root = tmp_path / "chexpert"
    csv_path = build_chexpert(root)
    csv_path.write_bytes(csv_path.read_text().encode("utf-16"))
    out = tmp_path / "out"
    assert run_cli("chexpert", "--csv", str(csv_path), "--image-root", str(root), "--out", str(out),
                   "--image-size", "32", "--workers", "1", "--quiet") == 0  # fmt: skip
    assert json.loads((out / "meta.json").read_text())["images"] == 2


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_zero_byte_split_csv_is_an_error(tmp_path, capsys, gzipped):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"])
    split = meta / "mimic-cxr-2.0.0-split.csv"
    split.unlink()
    if gzipped:
        split.with_suffix(".csv.gz").write_bytes(gzip.compress(b""))
    else:
        split.write_bytes(b"")
    assert prep_mimic(mimic, meta, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "mimic-cxr-2.0.0-split.csv" in error and "is empty" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Issue 22, case 2: a report that is not a bounded regular file is a skipped row, never a hang,
# a crash or gigabytes of memory


from tier_openclip.data_prep import report_files  # noqa: E402
from tier_openclip.data_prep.report_files import ReportUnusable, read_report_file, read_report_member  # noqa: E402

CAP = 64  # a small cap, so "oversized" is cheap to build


def _make_report(path: Path, kind: str, size: int) -> str | None:
    """Put a report of ``kind`` at ``path``; the reason it must be skipped under (None: usable)."""
    if kind == "regular":
        path.write_bytes(b"x" * size)
        return None if size <= CAP else report_files.REPORT_TOO_LARGE
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
        return "missing"
    elif kind == "link-to-big":
        (path.parent / "big").write_bytes(b"y" * (CAP + 1 + size))
        path.symlink_to(path.parent / "big")
        return report_files.REPORT_TOO_LARGE
    return report_files.REPORT_NOT_A_FILE


@given(kind=st.sampled_from(["regular", "fifo", "folder", "dev-zero", "dangling", "link-to-big"]),
       size=st.integers(0, 3 * CAP))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_report_is_read_only_when_a_bounded_regular_file(tmp_path, kind, size):
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        path = Path(folder) / "s50000000.txt"
        expected = _make_report(path, kind, size)
        try:
            raw = read_report_file(path, cap=CAP)
        except ReportUnusable as unusable:
            assert unusable.reason == expected and str(path) in unusable.detail
        else:
            assert expected in (None, "missing")
            assert raw == (None if expected == "missing" else b"x" * size)


def _zip_with(path: Path, content: bytes, declared: int | None = None) -> zipfile.ZipFile:
    """A reports zip with one deflated member; ``declared`` forges the size its headers state
    (a zip bomb that lies about what it inflates to)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("files/p10/p10000000/s50000000.txt", content)
    if declared is not None:
        data = bytearray(path.read_bytes())
        local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
        data[local + 22:local + 26] = declared.to_bytes(4, "little")
        data[central + 24:central + 28] = declared.to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return zipfile.ZipFile(path)


@pytest.mark.parametrize("content, declared, reason", [
    (b"IMPRESSION: fine.", None, None),
    (b"\0" * (8 << 20), None, report_files.REPORT_TOO_LARGE),  # 8 MiB of zeros: 8 kB deflated
    (b"\0" * (8 << 20), 40, report_files.REPORT_UNREADABLE),  # says 40 bytes: inflating stops there, CRC fails
])
def test_a_zip_member_is_read_bounded(tmp_path, content, declared, reason):
    import tracemalloc

    archive = _zip_with(tmp_path / "mimic-cxr-reports.zip", content, declared)
    name = archive.namelist()[0]
    tracemalloc.start()
    try:
        raw = read_report_member(archive, name, cap=CAP)
    except ReportUnusable as unusable:
        raw, found = None, unusable
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if reason is None:
        assert raw == b"IMPRESSION: fine."
    else:
        assert found.reason == reason and name in found.detail
    assert peak < 1 << 20  # bytes allocated while reading: far below the 8 MiB the member inflates to


@pytest.mark.parametrize("kind", ["fifo", "folder", "dev-zero", "oversized"])
def test_prep_skips_a_hostile_report_under_its_reason_and_goes_on(tmp_path, kind):
    import signal

    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a", "b", "c"])
    hostile = study_dir(mimic, 10000001, 50000001).with_suffix(".txt")
    hostile.unlink()
    if kind == "oversized":  # a real report padded past the cap
        hostile.write_bytes(REPORT_NORMAL_BYTES + b" " * report_files.REPORT_MAX_BYTES)
        expected = report_files.REPORT_TOO_LARGE
    else:
        expected = _make_report(hostile, kind, 0)
    out = tmp_path / "out"
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("prep hung on the report"))
    signal.alarm(60)
    try:
        assert prep_mimic(mimic, meta, out) == 0
    finally:
        signal.alarm(0)
    rows = failures(out)
    assert [(r["dicom_id"], r["kind"], r["reason"]) for r in rows] == [("b", "skipped", expected)]
    assert str(hostile) in rows[0]["detail"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["written"] == 2 and manifest["splits"]["train"]["skipped"] == {expected: 1}


# ---------------------------------------------------------------------------------------------
# Issue 22, case 5: a CSV header naming a column twice is refused by name (csv.DictReader keeps
# the last, which silently filtered every row)


@pytest.mark.parametrize("which, column", [("split", "split"), ("metadata", "ViewPosition"), ("split", "dicom_id")])
def test_a_duplicated_column_in_the_split_or_metadata_csv_is_refused(tmp_path, capsys, which, column):
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a", "b"])
    path = meta / f"mimic-cxr-2.0.0-{which}.csv"
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert column in rows[0]
    write_csv(path, rows[0] + [f" {column}"], [row + ["other"] for row in rows[1:]])
    out = tmp_path / "out"
    assert prep_mimic(mimic, meta, out) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tier-openclip prep: {path}: column(s) '{column}' appear more than once in the header, so which one holds the data is "
        "ambiguous; keep one of each")
    assert not out.exists()


def test_a_duplicated_label_column_in_an_eval_set_is_refused(tmp_path):
    from tier_openclip.data_prep.eval_layout import read_eval_set

    (tmp_path / "labels.csv").write_text("image,Edema,Edema\nimages/0.png,1,0\n")
    (tmp_path / "meta.json").write_text(json.dumps({"dataset": "chexpert", "labels": ["Edema"]}))
    with pytest.raises(ValueError) as error:
        read_eval_set(tmp_path)
    assert str(error.value) == (f"{tmp_path / 'labels.csv'}: column(s) 'Edema' appear more than once in the header, "
                                "so which one holds the data is ambiguous; keep one of each")


def test_out_reaching_an_input_root_through_a_symlink_is_refused(tmp_path, capsys):
    """Issue 22, case 1: the check follows symlinks, as the files written would."""
    mimic, meta, _ = build_tiny_mimic(tmp_path / "release", ["a"])
    link = tmp_path / "elsewhere"
    link.symlink_to(meta)
    before = digest_tree(tmp_path / "release")
    out = link / "shards"
    assert prep_mimic(mimic, meta, out) == 2
    assert capsys.readouterr().err.strip() == (
        f"tier-openclip prep: --out {out} is inside --metadata-dir {meta}: the command would write among (and could overwrite) its "
        "inputs; choose an --out outside it")
    assert digest_tree(tmp_path / "release") == before and not (meta / "shards").exists()
