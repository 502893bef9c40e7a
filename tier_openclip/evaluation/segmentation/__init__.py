"""Localized downstream evaluation: a linear segmentation probe on the frozen image tower, as
LoVT (Müller et al. 2022) evaluates local representations on SIIM pneumothorax and RSNA opacity.

Protocol, on a segmentation set (data_prep/seg_sets.py: ``prep siim``, ``prep rsna``, the phantom):
- Features: the image tower's projected patch embeddings (``features.token_features``'s
  ``image_tokens``, L2-normalised, the space TIER and the local losses act on) on the patch grid,
  computed ONCE per image with the model frozen (eval mode, no gradients) and kept in memory,
  so training the head costs no forward pass of the model.
- Head: a 1×1 convolution (one logit per patch) whose logits are upsampled bilinearly to the
  mask (F.interpolate, align_corners=False), as LoVT's linear segmentation head. Its inputs are
  standardised per channel with the training features' mean and std: an affine map the 1×1
  convolution could absorb, so the head stays linear; it only conditions the optimisation.
  Weights start at zero and the bias at the logit of the training masks' pixel share.
- Training: ``loss`` = BCE, soft Dice (batch-level; no Dice term on a batch without target) or
  their sum (default), Adam, a fixed number of epochs, on a random ``label_fraction`` of the
  training split (at least one image) drawn per seed; several seeds (default 3) for fractions
  below 1. The val split is not used: no early stopping, no tuning on the test split.
- Frame: metrics are computed at the model's input resolution. Each mask is sampled
  (nearest, at pixel centres) through the same resize and centre crop as its image
  (``grounding.geometry.input_frame``); input pixels outside the stored image ('longest' padding)
  are left out of loss and metrics.
- Metrics, on the test split, as LoVT reports them: Dice = 2TP / (2TP + FP + FN) over all test
  pixels together (micro, target class); IoU = TP / (TP + FP + FN) (target class, micro); mIoU
  = the mean of the target and background IoUs. A prediction of nothing where there is nothing
  scores 1 (0/0). Prediction: logit > 0.
- Intervals: percentile bootstrap over test images (seeded), of the mean over seeds; "sd" is
  the standard deviation over seeds (None with one seed).
- Baselines beside the probe, always, from the same metric functions on the same pixels:
  ``empty`` predicts background everywhere (Dice 0 whenever the test split has a target); the
  image-free ``prior`` is the training subset's mean mask, thresholded at the level that
  maximises its Dice on those training masks (exactly, by sorting its pixels). A probe that
  does not beat the prior has learned nothing about the image.

One results schema serves ``tier-openclip eval segmentation`` (JSON + markdown) and
``segmentation_evaluate`` (Python); ``probe_evaluate`` is the same evaluation on arrays.

Modules: ``probe`` (the head, its training, ``probe_evaluate``), ``metrics`` (counts → Dice/IoU,
seeds and bootstrap, the prior baseline), ``inputs`` (features, masks, ``segmentation_evaluate``),
``report`` (markdown), ``cli`` (the command). Their public names are importable from here.
"""

from tier_openclip.evaluation.segmentation.cli import add_segmentation_parser, run_segmentation
from tier_openclip.evaluation.segmentation.inputs import extract_features, masks_in_input_frame, segmentation_evaluate
from tier_openclip.evaluation.segmentation.metrics import (METRICS, confusion_counts, metrics_from_counts, prior_mask,
                                                           summarise_seeds)
from tier_openclip.evaluation.segmentation.probe import (DEFAULT_SMALL_FRACTION_SEEDS, LOSSES, LinearProbe, ProbeConfig,
                                                         default_seeds, predict, probe_evaluate, train_probe,
                                                         train_subset)
from tier_openclip.evaluation.segmentation.report import segmentation_markdown

__all__ = ["DEFAULT_SMALL_FRACTION_SEEDS", "LOSSES", "METRICS", "LinearProbe", "ProbeConfig", "add_segmentation_parser",
           "confusion_counts", "default_seeds", "extract_features", "masks_in_input_frame", "metrics_from_counts",
           "predict", "prior_mask", "probe_evaluate", "run_segmentation", "segmentation_evaluate",
           "segmentation_markdown", "summarise_seeds", "train_probe", "train_subset"]
