"""Data preparation for tier-openclip, one ``tier-openclip prep`` subcommand per dataset:
``mimic-cxr`` (WebDataset shards for open_clip), ``chexpert`` and ``padchest`` (zero-shot
evaluation sets), ``ms-cxr`` (a phrase-grounding set), ``siim`` and ``rsna`` (segmentation sets).

A pipeline of small pure functions (parse -> select -> decode -> write) with the side effects
at the edges:

- :mod:`.reports`: report decoding, section parsing, choice of the training text;
- :mod:`.runner`: the one prep runner (claim and lock --out, worker pool, failures.csv, meta)
  that every subcommand plugs its reader, renderer and writers into;
- :mod:`.mimic_release`: the MIMIC-CXR tree, CSVs and reports; :mod:`.mimic`: selection, the
  rendering of one sample, the run;
- :mod:`.images`: DICOM/JPEG/PNG decoding, modality and VOI LUTs, resizing, encoding;
- :mod:`.shards`: shard planning, writing, verification and resumption;
- :mod:`.eval_sets`: CheXpert and PadChest; :mod:`.ms_cxr`: MS-CXR; :mod:`.siim`, :mod:`.rsna`
  (over :mod:`.seg_sets`, the segmentation layout): segmentation sets;
- :mod:`.eval_layout`: the evaluation layout (its one writer and reader, used by prep, the
  phantom and the evaluators);
- :mod:`.chexpert`: the CheXpert label names and the one parser of a label cell;
- :mod:`.atomic`: the one atomic file writer (bytes, JSON, CSV, failures.csv);
- :mod:`.tables`: the one reader of the releases' input CSVs;
- :mod:`.paths`: paths and WebDataset keys built from data, kept inside their folders;
- :mod:`.limits`: the resource bounds (image size, pixel count, sample timeout);
- :mod:`.cli`: ``tier-openclip prep ...`` (also ``python -m tier_openclip.data_prep``).

Importing this package imports nothing heavy.
"""

from .errors import PrepError

__all__ = ["PrepError"]
