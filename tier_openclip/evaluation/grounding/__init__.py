"""Phrase grounding, the field's way (BioViL on MS-CXR: Boecking et al., ECCV 2022).

A grounding set (``tier-openclip prep ms-cxr``, or the phantom's test set) is a folder in the
evaluation layout (its one definition: ``data_prep/eval_layout.py``):

    meta.json        {"format", "dataset", "labels", "image_size", "box_format"}
    images/...       the images (paths relative to the folder)
    boxes.csv        image,finding,phrase,x0,y0,x1,y1: one row per box, in pixels of the stored
                     image, half-open; the rows of one (image, phrase) are one phrase whose region
                     is the union of its boxes
    prior_boxes.csv  optional finding,x0,y0,x1,y1[,phrase]: boxes of a training split (image-free
                     prior; with their phrases, the located prior too)

A pixel (column c, row r) is inside a box when its centre (c + ½, r + ½) is.

Maps. Each phrase gets a similarity map over the model's patch grid (patch tokens of
``features.token_features``, L2-normalised except for ``cam``):
- ``tokens`` (default): the mean over the phrase's valid tokens (the tower's ``text_mask``: no
  padding, and no start token for causal CLIP text, whose output is the same for every text) of
  each token's cosine similarity to each patch — what TIER's entropies act on;
- ``pooled``: the cosine similarity of the pooled phrase embedding (the one zero-shot scores
  use) to each patch.
- ``cam``: the pooled phrase embedding's dot product with each patch embedding *before* its L2
  normalisation. For a tower whose image feature is the mean of its projected patch embeddings
  (``TIER-tiny``, ``TIER-tiny-ResNet``, BioViL's ResNet), the image–phrase similarity CLIP trains
  is exactly the mean of this map over the patches divided by the feature's length, so the map is
  each patch's additive share of that score: a class activation map (Zhou et al., CVPR 2016).
  Cosine maps give a patch with little to say (a short embedding) the same vote as one that
  carries the finding; the CAM weighs each by what it adds. For a class-token or attention-pooled
  tower the patches are not the score's parts and the CAM is only a heuristic.
The grid map is interpolated bilinearly at every pixel centre of the stored image, undoing
open_clip's validation preprocessing (resize keeping the aspect ratio + centre crop; its
``longest`` and ``squash`` modes too): one interpolation, equal to
``F.interpolate(mode="bilinear", align_corners=False)`` when the stored image is the model's input.
Pixels the model never saw (cut off by the crop) are NaN and left out of every metric.

Metrics, per phrase (pure functions of a map and a region mask):
- CNR = |μ_in − μ_out| / √(σ²_in + σ²_out + ε) over the pixels inside / outside the region,
  population variances, ε = CNR_EPS = 1e-8: a map constant on each side (the ideal map) gets
  |Δμ|·10⁴ instead of a division by zero. 0 when either side has no pixel. BioViL reports it.
- pointing game: 1 when the map's maximum lies in the region. When pixels tie for the maximum,
  the share of them inside (the expected hit of picking one at random): a flat map scores the
  region's share of the image, not whatever pixel comes first.
- mIoU: the map min–max normalised to [0, 1]; the IoU of {map ≥ t} with the region, averaged
  over t = 0.1, 0.2, 0.3, 0.4, 0.5. A constant map predicts nothing: 0.
- own lesion (``competition``): in an image whose phrases name two different findings, 1 when
  the map's maximum over the pixels of exactly one of the two regions lies in the phrase's own,
  0 in the other's (ties: the share in its own); None when the regions cannot be told apart.
  Chance is the own part's pixel share. Asks whether a phrase prefers its own lesion to the
  image's other one, which a map that lights up "anything abnormal" does not.
Means over phrases, per finding and overall, with percentile bootstrap intervals that resample
the phrases (seeded; per finding within that finding's phrases). The findings meta.json lists as
``summary_excludes`` (the phantom: cardiomegaly, whose place never varies, so its image-free
prior points at 1.0) are scored per finding but left out of every overall figure.

Baselines, always beside them, from the same metric functions on the same regions:
- random patch: pointing = the share of the patch centres (in stored pixels) whose pixel lies in
  the region, the expected pointing of a uniformly random patch; CNR and mIoU: the mean over
  ``random_draws`` maps of i.i.d. uniform patch values (seeded), upsampled like the model's.
- image-free prior: the finding's mean box-indicator map, from prior_boxes.csv (training boxes,
  in the frame of meta.json's image_size) or, without it, leave-one-image-out over the set itself
  (the finding's boxes on the other images; each box scaled from its image's size to the one it
  is drawn on). A reader sees whether a model beats "pointing where the finding usually is".
- located prior: the best guess that reads the phrase but not the image — the mean box map of the
  same finding's boxes whose phrases name the same location words ("left", "upper", "apical"...;
  ``baselines.LOCATION_WORDS``), the finding's prior for a phrase without them. Training boxes
  need prior_boxes.csv's optional ``phrase`` column. On the phantom, whose located phrases name
  side and zone, it points better than the models do: the pointing game of a phrase that says
  where measures the words as much as the map. ``by_location_words`` therefore repeats the
  overall numbers and baselines for the phrases with and without location words; on the second
  kind only the image can tell a model where to point.

Modules: the set is read and written by ``data_prep.eval_layout`` (one owner of the layout for
prep, the phantom and both evaluators); here ``metrics`` (pure), ``geometry`` (patch grid to
stored image, box membership and the pointing game's rule, for every command that draws or scores a
patch map), ``baselines``, ``competition`` (who competes with whom, the own-lesion summary), ``evaluator`` (model maps, results, markdown, training hook, CLI).
Used three ways, with one results schema: ``tier-openclip eval grounding`` (JSON + markdown),
``grounding_evaluate`` (Python) and ``grounding_during_training`` (``--tier-grounding DIR``).
"""

from tier_openclip.data_prep.eval_layout import (
    BOX_COLUMNS, BOX_FORMAT, BOXES_CSV, FORMAT, META_JSON, PRIOR_BOXES_CSV, PRIOR_COLUMNS, Box, GroundingPhrase,
    GroundingSet, box_covers_pixels, grounding_meta, read_grounding_set, region_mask, write_boxes_csv,
    write_prior_boxes_csv,
)
from tier_openclip.evaluation.grounding.baselines import (
    LOCATION_WORDS, PRIOR_SOURCES, PriorMaps, chance_pointing, location_words, random_map_metrics,
)
from tier_openclip.evaluation.grounding.competition import OWN_LESION, competitors, own_lesion_summary
from tier_openclip.evaluation.grounding.evaluator import (
    PHRASE_MODES, add_grounding_parser, check_training_dir, grounding_during_training, grounding_evaluate,
    grounding_markdown, phrase_embeddings, phrase_maps, run_grounding, summarise, training_metrics,
)
from tier_openclip.evaluation.grounding.geometry import (
    MapGeometry, grid_shape, input_frame, model_geometry, patch_pointing, points_in_boxes, points_in_region,
    pointing_share, resize_mode_of, upsample_maps,
)
from tier_openclip.evaluation.grounding.metrics import (
    CNR_EPS, METRICS, THRESHOLDS, bootstrap_means, cnr, exclusive_regions, grounding_metrics, miou, own_lesion,
    own_lesion_chance, pointing_game,
)

__all__ = [
    "BOX_COLUMNS", "BOX_FORMAT", "BOXES_CSV", "CNR_EPS", "FORMAT", "LOCATION_WORDS", "META_JSON", "METRICS", "PHRASE_MODES",
    "PRIOR_BOXES_CSV", "PRIOR_COLUMNS", "PRIOR_SOURCES", "THRESHOLDS", "Box", "GroundingPhrase", "GroundingSet",
    "MapGeometry", "PriorMaps", "add_grounding_parser", "bootstrap_means", "box_covers_pixels", "chance_pointing",
    "OWN_LESION", "check_training_dir", "cnr", "competitors", "exclusive_regions", "own_lesion", "own_lesion_chance",
    "own_lesion_summary", "grid_shape", "grounding_during_training", "grounding_evaluate",
    "grounding_markdown", "grounding_meta", "grounding_metrics", "input_frame", "location_words", "miou", "phrase_embeddings",
    "model_geometry", "patch_pointing", "phrase_maps", "pointing_game", "pointing_share", "points_in_boxes",
    "points_in_region", "random_map_metrics", "read_grounding_set", "region_mask", "resize_mode_of", "run_grounding",
    "summarise", "training_metrics", "upsample_maps", "write_boxes_csv", "write_prior_boxes_csv",
]
