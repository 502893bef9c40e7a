"""Phantom chest radiographs with known lesion locations: a benchmark that can tell whether a
model localises.

Each sample is a frontal (PA) chest radiograph with 0-2 synthetic findings, each of one
location-free category (``FINDING_NAMES``: opacity, bulla, pleural effusion, cardiomegaly,
pneumothorax) drawn at a random place inside its plausible region (a lung lesion anywhere in
either lung field, an effusion at either base, a pneumothorax at either apex), a report-style
caption that names each present finding and where it is, and the pixel box of every finding.
The words of captions, zero-shot prompts and grounded phrases all come from one phrase bank
(``PHRASES``; ``prompt_set()``).

Never flip these images horizontally as augmentation: the captions say "left" and "right" (the
patient's; the patient's right is on the image left).

``PhantomConfig.preset(size, grounding=True)`` is the grounding layout: every finding named by
its bare term (no word in a caption or phrase says where), opacity and bulla anywhere in either
lung (beside an enlarged heart, in that lung's upper zone), one or two different findings per
image (each phrase has a competitor lesion for tier_openclip.evaluation.grounding's own-lesion
rate); cardiomegaly, which never moves, is left out of the grounding summaries
(``SUMMARY_EXCLUDES``).

The background is the same procedural chest on every install (``anatomy``'s docstring says why).

Modules: ``anatomy`` (chest geometry and backgrounds; the pydicom-data CR study as an opt-in),
``findings`` (categories, sites, drawing), ``reports`` (phrase bank, captions), ``sampling``
(config, plan -> render, the image-free prior baseline), ``dataset`` (shards and the grounding
set), ``raster`` (image helpers). Everything is a pure function of a ``numpy.random.Generator``
and a :class:`PhantomConfig`, except :func:`write_phantom_dataset`.
"""

from __future__ import annotations

from .anatomy import BASE_SIZE, ZONES, Anatomy, Background, build_background, real_anatomy_path
from .dataset import write_phantom_dataset
from .findings import (
    FIELD_OF_VIEW_CM,
    FINDING_NAMES,
    FINDINGS,
    FINDINGS_BY_NAME,
    GROUNDING_SITES,
    LUNG_LESIONS,
    SIDES,
    SITES,
    Finding,
    FindingSpec,
    PlannedFinding,
    Site,
    compatible,
    grounding_placements,
    sites_of,
)
from .reports import (
    NORMAL_IMPRESSIONS,
    PHRASES,
    CategoryPhrases,
    ReportSentence,
    negative_sentences,
    other_side_sentence,
    phrase_options,
    positive_sentences,
    prompt_set,
    report_sentences,
)
from .sampling import (
    DEFAULT_FINDING_WEIGHTS,
    GROUNDING_DEFAULTS,
    SUMMARY_EXCLUDES,
    PhantomConfig,
    PhantomSample,
    SamplePlan,
    make_sample,
    plan_sample,
    prior_pointing,
    prior_pointing_baseline,
    render_sample,
    sample_finding_names,
    sample_rng,
    sample_sites,
    split_boxes,
    split_labels,
)

__all__ = [
    "Anatomy", "BASE_SIZE", "Background", "CategoryPhrases", "DEFAULT_FINDING_WEIGHTS", "FIELD_OF_VIEW_CM",
    "FINDINGS", "FINDINGS_BY_NAME", "FINDING_NAMES", "Finding", "FindingSpec", "GROUNDING_DEFAULTS", "GROUNDING_SITES", "LUNG_LESIONS", "NORMAL_IMPRESSIONS",
    "PHRASES", "PhantomConfig", "PhantomSample", "PlannedFinding", "ReportSentence", "SIDES", "SITES", "SUMMARY_EXCLUDES",
    "SamplePlan",
    "Site", "ZONES", "build_background", "compatible", "grounding_placements", "make_sample", "negative_sentences", "other_side_sentence",
    "phrase_options", "plan_sample", "positive_sentences", "prior_pointing", "prior_pointing_baseline",
    "prompt_set", "real_anatomy_path", "render_sample", "report_sentences", "sample_finding_names", "sample_rng",
    "sample_sites", "sites_of", "split_boxes", "split_labels", "write_phantom_dataset",
]
