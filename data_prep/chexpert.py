"""The CheXpert label contract: the 14 label names, the competition tasks, and the one parser
of a label cell (MIMIC-CXR's chexpert.csv, CheXpert's own CSVs, an evaluation set's labels.csv)."""

from __future__ import annotations

# The 14 CheXpert labels in the CheXpert dataset's column order. Both mimic-cxr-2.0.0-chexpert.csv
# and CheXpert's own CSVs are read by column name.
CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip

# The CheXpert competition tasks (Irvin et al., 2019).
CHEXPERT_COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


def parse_chexpert_label(value: str) -> float | None:
    """A CheXpert label cell: 1.0 positive, 0.0 negative, -1.0 uncertain ("1", "1.0", " 0 " alike),
    blank -> None; anything else raises ValueError naming the cell."""
    value = value.strip()
    if value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number not in (POSITIVE, NEGATIVE, UNCERTAIN):
        raise ValueError(f"unexpected CheXpert label value {value!r}")
    return number
