"""Evaluation of a trained model: model code produces arrays, metric code turns them into numbers,
each figure beside its baselines, in one results schema (JSON, then markdown) for the command, the
Python API and the training hook.

- ``zeroshot``: zero-shot classification AUC (CheXzero's protocol), with ``prompts`` (the prompt
  sets; ``authors_protocol`` the TIER authors' named set), ``bootstrap`` (AUCs and their intervals)
  and ``image_files`` (images read for a DataLoader);
- ``grounding``: phrase grounding on boxes (MS-CXR's way), and the patch-grid geometry
  (``grounding.geometry``) every map that is drawn or scored goes through;
- ``segmentation``: a linear segmentation probe on the frozen image tower (LoVT's way);
- ``analyze`` (sparsity of the token↔patch maps, the paper's analyses) and ``heatmap`` (the maps
  drawn over a radiograph): the commands of the same names;
- ``validation_log``: what the evaluators share while a training run calls them.
"""
