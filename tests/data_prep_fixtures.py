"""Builders for the data_prep tests: a MIMIC-CXR-shaped release (DICOM and JPG), CheXpert and
PadChest evaluation sets, all small and made here (nothing is downloaded).

Every DICOM carries identifying header elements with the marker strings in ``PHI_MARKERS``, so
the tests can check that none of them reaches a shard.
"""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PHI_MARKERS = (b"SECRETNAME", b"PID-SECRET-4711", b"19991231", b"19500102", b"SECRET HOSPITAL", b"SECRETDOC")
LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia",
    "Pneumothorax", "Support Devices",
)  # fmt: skip

REPORT_NORMAL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough.

 COMPARISON:  ___

 FINDINGS:

 The lungs are   clear.  No   pleural effusion.
 Heart size is normal.

 IMPRESSION:

 No acute cardiopulmonary process.
"""
REPORT_NORMAL_BYTES = REPORT_NORMAL.encode()
# A repeated IMPRESSION: the last one wins; a repeated empty FINDINGS does not erase the first.
REPORT_REPEATED = """                                 FINAL REPORT
 INDICATION:  Dyspnea.

 FINDINGS:  Small left   pleural effusion.

 FINDINGS:

 IMPRESSION:  Preliminary read, see below.

 IMPRESSION:
 Small left pleural effusion,
 new since ___.
"""
REPORT_NO_IMPRESSION = """                                 FINAL REPORT
 HISTORY:  Line placement.

 FINDINGS:  Right internal jugular line ends in the low SVC.  No pneumothorax.
"""
REPORT_EMPTY_IMPRESSION = """ FINAL REPORT
 FINDINGS:  Mild cardiomegaly.

 IMPRESSION:
"""
# cp1252 bytes (0x96 en dash, 0xe9 e-acute): not UTF-8.
REPORT_NOT_UTF8 = b" FINAL REPORT\n FINDINGS:  Nodule \x96 unchanged.\n\n IMPRESSION:  Stable nodule, caf\xe9 sign.\n"


@dataclass(frozen=True)
class Case:
    """One DICOM of the fake release and what the pipeline must make of it."""

    name: str
    subject_id: int
    study_id: int
    dicom_id: str
    split: str
    view: str
    # "written", "filtered:<reason>", "skipped:<reason>", "failed:<reason>"
    expect: str
    note: str | None = None


def smooth_image(rows: int, cols: int, seed: int, high: int, low: int = 0) -> np.ndarray:
    """A radiograph-like smooth pattern with noise, values in [low, high]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    base = 0.5 + 0.25 * np.sin(x / cols * 6.0 + seed) * np.cos(y / rows * 4.0) + 0.2 * (y / rows)
    base += rng.normal(0.0, 0.03, size=base.shape)
    base = (base - base.min()) / (base.max() - base.min())
    return np.rint(low + base * (high - low))


def dicom_dataset(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 16,
                  signed: bool = False, window: tuple[float, float] | None = None,
                  rescale: tuple[float, float] | None = None, frames: int = 1):  # fmt: skip
    """An uncompressed (explicit VR little endian) DICOM dataset with identifying elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "SECRETNAME^JOHN"
    ds.PatientID = "PID-SECRET-4711"
    ds.PatientBirthDate = "19500102"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "19991231"
    ds.InstitutionName = "SECRET HOSPITAL"
    ds.ReferringPhysicianName = "SECRETDOC^JANE"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    array = np.asarray(pixels).astype(np.int16 if signed else np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
        array = np.stack([array] + [np.zeros_like(array)] * (frames - 1))
    ds.Rows, ds.Columns = array.shape[-2:]
    ds.PixelData = array.tobytes()
    return ds


def save_dicom(ds, path: Path, transfer_syntax=None) -> Path:
    """Save ``ds``, compressed with pydicom's encoders when ``transfer_syntax`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, ds.pixel_array)
    ds.save_as(path, enforce_file_format=True)
    return path


def study_dir(root: Path, subject_id: int, study_id: int) -> Path:
    subject = f"{subject_id:08d}"
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study_id:08d}"


def _write_csv_gz(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(gzip.compress(buffer.getvalue().encode("utf-8"), mtime=0))


def build_mimic(root: Path) -> tuple[Path, Path, list[Case]]:
    """A MIMIC-CXR 2.0.0 tree (``root/mimic``) and a MIMIC-CXR-JPG tree (``root/jpg``, with the
    three CSVs). Returns both roots and the cases."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless, RLELossless

    mimic, jpg = root / "mimic", root / "jpg"
    cases: list[Case] = []
    reports: dict[tuple[int, int], bytes | None] = {}
    rendered: dict[str, np.ndarray] = {}  # dicom_id -> 8-bit image for the JPG release

    def add(name, subject, study, split, view, expect, report=REPORT_NORMAL_BYTES, dataset=None,
            syntax=None, raw: bytes | None = None, copy_from: str | None = None, note=None):  # fmt: skip
        dicom_id = f"{name}-{subject % 1000:03d}{study % 1000:03d}"
        case = Case(name, subject, study, dicom_id, split, view, expect, note)
        cases.append(case)
        reports[(subject, study)] = report
        path = study_dir(mimic, subject, study) / f"{dicom_id}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        if dataset is not None:
            image = dataset.pixel_array
            save_dicom(dataset, path, syntax)
            frame = image[0] if image.ndim == 3 else image
            rendered[dicom_id] = np.rint(255 * (frame - frame.min()) / max(1, np.ptp(frame))).astype(np.uint8)
        elif raw is not None:
            path.write_bytes(raw)
        elif copy_from is not None:
            shutil.copyfile(get_testdata_file(copy_from), path)
            rendered[dicom_id] = smooth_image(40, 48, len(cases), 255).astype(np.uint8)
        return case

    image = smooth_image(96, 80, 1, 4095)
    add("plain12", 10000001, 50000001, "train", "PA", "written", dataset=dicom_dataset(image, bits_stored=12, window=(2048, 4096)))
    add("mono1-16bit", 10000001, 50000002, "train", "AP", "written", note="no_voi_minmax",
        dataset=dicom_dataset(smooth_image(80, 96, 2, 65535), photometric="MONOCHROME1"))
    add("rle", 10000002, 50000003, "train", "PA", "written", report=REPORT_REPEATED.encode(),
        dataset=dicom_dataset(smooth_image(96, 96, 3, 40000, 1000), window=(20000, 30000)), syntax=RLELossless)
    add("j2k", 10000002, 50000004, "train", "PA", "written",
        dataset=dicom_dataset(smooth_image(88, 96, 4, 16383), bits_stored=14, window=(8000, 12000)), syntax=JPEG2000Lossless)
    add("j2k-mono1", 10000003, 50000005, "validate", "AP", "written",
        dataset=dicom_dataset(smooth_image(96, 72, 5, 32767), photometric="MONOCHROME1", bits_stored=15, window=(15000, 30000)),
        syntax=JPEG2000Lossless)
    add("multiframe", 10000003, 50000006, "train", "PA", "written", note="multi_frame_first_frame",
        dataset=dicom_dataset(smooth_image(64, 64, 6, 4095), bits_stored=12, window=(2048, 4096), frames=3))
    add("signed-rescale", 10000004, 50000007, "train", "AP", "written",
        dataset=dicom_dataset(smooth_image(72, 72, 7, 2000, -1000), signed=True, rescale=(1.0, -1024.0), window=(-600, 1500)))
    add("small", 10000004, 50000008, "test", "PA", "written", note="upsampled",
        dataset=dicom_dataset(smooth_image(40, 32, 8, 4095), bits_stored=12, window=(2048, 4096)))
    add("not-utf8", 10000005, 50000009, "train", "PA", "written", report=REPORT_NOT_UTF8,
        dataset=dicom_dataset(smooth_image(80, 80, 9, 4095), bits_stored=12, window=(2048, 4096)))
    add("jpeg-lossless", 10000005, 50000010, "train", "PA", "written", copy_from="JPEG-LL.dcm")
    add("jpeg-ls", 10000005, 50000011, "train", "AP", "written", copy_from="MR_small_jpeg_ls_lossless.dcm")
    add("ycbcr-jpeg", 10000006, 50000012, "train", "PA", "written", note="color_to_grayscale", copy_from="SC_rgb_jpeg_dcmtk.dcm")
    # Failures: the image cannot be made.
    add("corrupt", 10000006, 50000013, "train", "PA", "failed:image_unreadable", raw=np.random.default_rng(13).bytes(4096))
    truncated = io.BytesIO()
    dicom_dataset(smooth_image(96, 96, 14, 4095), bits_stored=12).save_as(truncated, enforce_file_format=True)
    add("truncated", 10000006, 50000014, "train", "PA", "failed:pixel_data_corrupt", raw=truncated.getvalue()[:-6000])
    palette = dicom_dataset(smooth_image(32, 32, 15, 255), photometric="PALETTE COLOR", bits_stored=8)
    add("palette", 10000007, 50000015, "train", "PA", "failed:photometric_unsupported", dataset=palette)
    add("blank", 10000007, 50000016, "train", "PA", "failed:image_blank", dataset=dicom_dataset(np.full((48, 48), 700), bits_stored=12))
    missing = add("missing-file", 10000007, 50000017, "train", "PA", "failed:image_missing")
    # Filtered or skipped while planning.
    add("lateral", 10000001, 50000001, "train", "LATERAL", "filtered:view_not_selected",
        dataset=dicom_dataset(smooth_image(64, 64, 18, 4095), bits_stored=12))
    add("no-report", 10000008, 50000018, "train", "PA", "skipped:report_missing", report=None,
        dataset=dicom_dataset(smooth_image(64, 64, 19, 4095), bits_stored=12))
    add("no-impression", 10000008, 50000019, "train", "PA", "skipped:report_section_missing", report=REPORT_NO_IMPRESSION.encode(),
        dataset=dicom_dataset(smooth_image(64, 64, 20, 4095), bits_stored=12))
    add("empty-impression", 10000008, 50000020, "validate", "PA", "skipped:report_section_empty",
        report=REPORT_EMPTY_IMPRESSION.encode(), dataset=dicom_dataset(smooth_image(64, 64, 21, 4095), bits_stored=12))
    # The JPG release is made from the DICOMs' pixels; its "corrupt" JPG is garbage as well,
    # its "truncated" JPG is cut short, its "blank" JPG is one grey level.
    (study_dir(mimic, missing.subject_id, missing.study_id) / f"{missing.dicom_id}.dcm").unlink(missing_ok=True)

    from PIL import Image

    for case in cases:
        target = study_dir(jpg, case.subject_id, case.study_id) / f"{case.dicom_id}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        if case.dicom_id in rendered:
            Image.fromarray(rendered[case.dicom_id], mode="L").save(target, quality=95)
        elif case.name == "truncated":  # a real JPEG, cut short
            buffer = io.BytesIO()
            Image.fromarray(smooth_image(96, 96, 14, 255).astype(np.uint8), mode="L").save(buffer, format="JPEG")
            target.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        elif case.name != "missing-file":
            target.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for (subject, study), text in reports.items():
        if text is not None:
            report = study_dir(mimic, subject, study).with_suffix(".txt")
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_bytes(text)

    _write_csv_gz(jpg / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
                  [[c.dicom_id, c.study_id, c.subject_id, c.split] for c in cases])  # fmt: skip
    _write_csv_gz(jpg / "mimic-cxr-2.0.0-metadata.csv.gz",
                  ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
                   "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
                   "PatientOrientationCodeSequence_CodeMeaning"],
                  [[c.dicom_id, c.subject_id, c.study_id, "CHEST (PA AND LAT)", c.view, 96, 96, 21800506, 213014.531,
                    "CHEST (PA AND LAT)", "postero-anterior", "Erect"] for c in cases])  # fmt: skip
    studies = sorted({(c.subject_id, c.study_id) for c in cases})
    label_rows = []
    for i, (subject, study) in enumerate(studies):
        values = [["1.0", "0.0", "-1.0", ""][(i + j) % 4] for j in range(len(LABELS))]
        label_rows.append([subject, study, *values])
    _write_csv_gz(jpg / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *LABELS], label_rows)
    return mimic, jpg, cases


def zip_reports(mimic: Path, destination: Path) -> Path:
    """A copy of ``mimic`` whose reports live only in mimic-cxr-reports.zip (as published)."""
    shutil.copytree(mimic, destination)
    with zipfile.ZipFile(destination / "mimic-cxr-reports.zip", "w") as archive:
        for report in sorted((destination / "files").rglob("s*.txt")):
            archive.write(report, report.relative_to(destination).as_posix())
            report.unlink()
    return destination


CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                   "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                   "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]  # fmt: skip


def build_chexpert(root: Path) -> Path:
    """``root/CheXpert-v1.0/valid/...`` JPEGs and ``root/CheXpert-v1.0/valid.csv``: two frontal
    images, one lateral, one frontal whose file is missing. Returns the CSV."""
    from PIL import Image

    rows = []
    specs = [
        ("patient00001/study1/view1_frontal.jpg", "Frontal", "PA", ["1.0", "0.0", "1.0", "-1.0"]),
        ("patient00002/study1/view1_frontal.jpg", "Frontal", "AP", ["0.0", "1.0", "", "0.0"]),
        ("patient00002/study1/view2_lateral.jpg", "Lateral", "", ["0.0", "1.0", "0.0", "0.0"]),
        ("patient00003/study1/view1_frontal.jpg", "Frontal", "PA", ["0.0", "0.0", "0.0", "1.0"]),
    ]
    for i, (relative, view, appa, first) in enumerate(specs):
        path = f"CheXpert-v1.0/valid/{relative}"
        labels = first + [["0.0", "1.0"][(i + j) % 2] for j in range(14 - len(first))]
        rows.append([path, "Female", 60 + i, view, appa, *labels])
        if i != 3:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(smooth_image(120, 100, 40 + i, 255).astype(np.uint8), mode="L").save(target)
    csv_path = root / "CheXpert-v1.0" / "valid.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CHEXPERT_HEADER)
        writer.writerows(rows)
    return csv_path


PADCHEST_HEADER = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
                   "ViewPosition_DICOM", "Projection", "MethodProjection", "Modality_DICOM", "Manufacturer_DICOM",
                   "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
                   "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
                   "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
                   "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
                   "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]  # fmt: skip


def build_padchest(root: Path) -> Path:
    """16-bit PNGs under ``root/images/<ImageDir>/`` and the CSV (gzip'ed, as some mirrors
    ship it). Returns the CSV."""
    from PIL import Image

    specs = [  # ImageID, ImageDir, Projection, MethodLabel, Labels
        ("img1.png", "0", "PA", "Physician", "['pleural effusion', ' cardiomegaly']"),
        ("img2.png", "0", "AP_horizontal", "Physician", "['normal']"),
        ("img3.png", "1", "L", "Physician", "['normal']"),
        ("img4.png", "1", "PA", "RNN_model", "['pneumonia']"),
        ("img5.png", "2", "AP", "Physician", "['Cardiomegaly ', 'pleural effusion', '']"),
        ("img6.png", "2", "PA", "Physician", "nan"),
        ("img7.png", "2", "PA", "Physician", "['exclude']"),
    ]
    rows = []
    for i, (image_id, image_dir, projection, method, labels) in enumerate(specs):
        target = root / "images" / image_dir / image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = smooth_image(100, 90, 60 + i, 60000, 3000).astype(np.uint16)
        Image.fromarray(pixels).save(target)  # mode I;16
        row = {name: "" for name in PADCHEST_HEADER}
        row.update(ImageID=image_id, ImageDir=image_dir, Projection=projection, MethodLabel=method, Labels=labels,
                   PatientID="PID-SECRET-4711", StudyDate_DICOM="19991231")  # fmt: skip
        rows.append([row[name] for name in PADCHEST_HEADER])
    csv_path = root / "padchest.csv.gz"
    _write_csv_gz(csv_path, PADCHEST_HEADER, rows)
    return csv_path


def render_or_die(task):
    """A render function for shards.write_shards that kills its worker process (as a crash in
    a native decoder would) on the sample keyed ``die``, and renders the others as text."""
    import os

    from tier_openclip.data_prep.mimic import SampleResult

    if task.key == "die":
        os._exit(3)
    return SampleResult(task.key, {"txt": task.key.encode()})


def render_text(task):
    """render_or_die on a good day: every sample, ``die`` included, rendered as text."""
    from tier_openclip.data_prep.mimic import SampleResult

    return SampleResult(task.key, {"txt": task.key.encode()})


# ---------------------------------------------------------------------------------------------
# A tiny release with arbitrary dicom_ids (tests/test_security_data.py)


def id_path_is_inside(study: Path, dicom_id: str, extension: str = "dcm") -> bool:
    """The test's own oracle for 'the image path of this id stays in its study folder'
    (posixpath, independent of data_prep.paths)."""
    import posixpath

    name = f"{dicom_id}.{extension}"
    if "\0" in name or name.startswith("/"):
        return False
    return posixpath.normpath(posixpath.join(str(study), name)).startswith(str(study) + "/")


def tiny_dicom_bytes(rows: int = 20, cols: int = 24, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    dicom_dataset(smooth_image(rows, cols, seed, 4095), bits_stored=12, window=(2048, 4096)).save_as(
        buffer, enforce_file_format=True
    )
    return buffer.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    """A CSV in ``encoding``; gzip'ed when ``path`` ends in .gz."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    data = buffer.getvalue().encode(encoding)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def build_tiny_mimic(root: Path, dicom_ids: list[str], *, report: bytes = REPORT_NORMAL_BYTES,
                     csv_encoding: str = "utf-8", images: dict[str, bytes] | None = None,
                     jpg: bool = False) -> tuple[Path, Path, dict[str, bool]]:  # fmt: skip
    """``root/mimic`` (files/ with one study per id, each with ``report``; with ``jpg`` the
    images are JPEGs, so the same folder is the ``--image-root``) and ``root/meta`` (split CSV,
    all train, and metadata CSV, all PA, in ``csv_encoding``; no CheXpert CSV).

    The image of each id (a small DICOM, or ``images[id]``; a JPEG with ``jpg``) is written
    where the id names it, when that stays inside its study folder (:func:`id_path_is_inside`)
    and the file system takes the name. Returns both roots and {id: image written} (first
    occurrence of an id).
    """
    from PIL import Image

    mimic, meta = root / "mimic", root / "meta"
    extension = "jpg" if jpg else "dcm"
    if jpg:
        buffer = io.BytesIO()
        Image.fromarray(smooth_image(20, 24, 0, 255).astype(np.uint8), mode="L").save(buffer, format="JPEG")
        default = buffer.getvalue()
    else:
        default = tiny_dicom_bytes()
    created: dict[str, bool] = {}
    split_rows, metadata_rows = [], []
    for i, dicom_id in enumerate(dicom_ids):
        subject, study = 10000000 + i, 50000000 + i
        folder = study_dir(mimic, subject, study)
        folder.mkdir(parents=True, exist_ok=True)
        folder.with_suffix(".txt").write_bytes(report)
        split_rows.append([dicom_id, study, subject, "train"])
        metadata_rows.append([dicom_id, subject, study, "PA"])
        if dicom_id in created:
            continue
        created[dicom_id] = False
        if id_path_is_inside(folder, dicom_id, extension):
            target = Path(f"{folder}/{dicom_id}.{extension}")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((images or {}).get(dicom_id, default))
                created[dicom_id] = True
            except OSError:  # a name the file system refuses, or a file where a folder must be
                pass
    write_csv(meta / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows, csv_encoding)
    write_csv(meta / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
              metadata_rows, csv_encoding)  # fmt: skip
    return mimic, meta, created
