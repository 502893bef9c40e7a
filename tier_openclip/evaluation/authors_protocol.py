"""The TIER authors' zero-shot protocol as a named prompt set: ``--prompts authors``.

Copied from the authors' code, github.com/apalepu13/TIER_Regularized_CLIP at commit
ce1e17199557a19594f1b47049069639966a0b4c (the repository's newest, 2023-04-04):

- ``Evaluation/query_custom_anil.csv`` (columns Variable, Text): the sentences of each CheXpert
  label and of "No Finding" (``Modeling/CLIP_Embedding.py`` reads a file of that name from the
  authors' cluster; the repository's copy is the one quoted here).
- ``Modeling/CLIP_Embedding.py``, ``getLabelEmbeddings``: a CheXpert label's positive is the mean
  of its sentences' embeddings, its negative the mean of the "No Finding" sentences plus
  ``"No " + label + "."``; a PadChest finding's positive is ``[label + "is present"]`` and its
  negative ``["No " + label + "."]``. Each embedding is CXR-BERT's l2-normalised projection
  (``get_projected_text_embeddings``) and ``Modeling/utils.py`` renormalises each mean: exactly
  tier_openclip.evaluation.zeroshot.prompt_embeddings' ensemble, so the sets below are plain prompt lists.
- ``Modeling/MedDataHelpers.py``, ``getImList``: the 57 physician-labelled PadChest findings
  (``high_importance``), in the authors' spelling and order.
- ``Evaluation/zero_shot_classify.py``: the 5 CheXpert labels (``heads``), in the order the
  authors print them.

Kept as the code has them, where it differs from the paper's wording:
- PadChest positives concatenate without a space: ``"cardiomegaly" + "is present"`` is
  ``"cardiomegalyis present"``. A prompt file gives ``"{label} is present"`` if you want it.
- "Atelectasis is present." is listed twice for Atelectasis, so it weighs double in the mean.
Scores: the authors score CheXpert by sim_pos − sim_neg (``utils.get_all_preds``) and PadChest
by softmax([sim_pos, sim_neg])[0] at scale 1 (``utils.getPadPredictions``); both are monotone in
sim_pos − sim_neg, which is what tier_openclip.evaluation.zeroshot scores, so the AUCs are theirs.
"""

from __future__ import annotations

from tier_openclip.data_prep.chexpert import CHEXPERT_COMPETITION_LABELS

# Evaluation/zero_shot_classify.py `heads`: the paper's column order for CheXpert.
AUTHORS_CHEXPERT_LABELS = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")

# Evaluation/query_custom_anil.csv, the rows of each label in file order.
CHEXPERT_SENTENCES: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": ("Cardiomegaly is present.", "The heart shadow is enlarged.", "The cardiac silhouette is enlarged."),
    "Edema": ("Increased fluid in the alveolar wall indicates pulmonary edema.", "Edema is present."),
    "Consolidation": ("Consolidation is present.", "Dense white area of right lung indicative of consolidation."),
    "Atelectasis": ("Atelectasis is present.", "Atelectasis is present.",
                    "Basilar opacity and volume loss is likely due to atelectasis."),
    "Pleural Effusion": ("Blunting of the costophrenic angles represents pleural effusions.",
                         "The pleural space is filled with fluid.", "Layering pleural effusions are present."),
}  # fmt: skip
NO_FINDING_SENTENCES = (
    "The lungs are clear.", "No abnormalities are present.", "The chest is normal.",
    "No clinically significant radiographic abnormalities.", "No radiographically visible abnormalities in the chest.",
)  # fmt: skip

# Modeling/MedDataHelpers.py `high_importance`: the 57 findings whose mean AUC the paper reports.
PADCHEST_FINDINGS = (
    "COPD signs", "endotracheal tube", "pleural effusion", "pulmonary edema", "heart insufficiency",
    "pulmonary fibrosis", "cardiomegaly", "vascular redistribution", "consolidation", "hilar congestion",
    "pulmonary mass", "cavitation", "alveolar pattern", "calcified pleural thickening", "lung metastasis",
    "emphysema", "interstitial pattern", "costophrenic angle blunting", "tuberculosis", "atelectasis",
    "reticular interstitial pattern", "pneumonia", "lobar atelectasis", "normal", "pleural thickening",
    "reticulonodular interstitial pattern", "infiltrates", "hypoexpansion", "hypoexpansion basal",
    "humeral fracture", "pneumothorax", "multiple nodules", "hyperinflated lung", "bronchiectasis",
    "adenopathy", "mediastinal enlargement", "laminar atelectasis", "vertebral compression", "rib fracture",
    "tuberculosis sequelae", "hilar enlargement", "tracheal shift", "mediastinal mass",
    "central vascular redistribution", "vertebral fracture", "superior mediastinal enlargement",
    "vascular hilar enlargement", "nodule", "air trapping", "bullas", "ground glass pattern",
    "calcified adenopathy", "minor fissure thickening", "unchanged", "clavicle fracture", "pseudonodule",
    "end on vessel",
)  # fmt: skip


def authors_prompts(dataset: str) -> dict[str, dict[str, list[str]]]:
    """The authors' {label: {"positive": [...], "negative": [...]}} for ``dataset`` ("chexpert":
    the 5 competition labels; "padchest": the 57 findings). ValueError for another dataset."""
    if dataset == "chexpert":
        return {label: {"positive": list(CHEXPERT_SENTENCES[label]),
                        "negative": [*NO_FINDING_SENTENCES, f"No {label}."]}
                for label in AUTHORS_CHEXPERT_LABELS}  # fmt: skip
    if dataset == "padchest":
        # Exactly the authors' concatenation: no space before "is present" (see the module docstring).
        return {label: {"positive": [label + "is present"], "negative": ["No " + label + "."]} for label in PADCHEST_FINDINGS}
    raise ValueError(f"the authors' prompts are defined for chexpert and padchest sets, not {dataset!r} "
                     "(meta.json's dataset; pass --dataset chexpert|padchest)")
