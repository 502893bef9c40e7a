"""The open_clip training plugin: ``--loss tier`` (and local-uniformity, filip) inside open_clip's
own training loop, wrapped, not forked.

``plugin`` installs the wrappers (the start-up hook and ``python -m tier_openclip.train`` call its
``activate``); ``plugin_args`` checks the plugin's flags and ``checkpoint_checks`` the checkpoints a
run reads, before any training; ``auto_lambda`` chooses λ from the first batch; ``diagnostics``
measures whether TIER acts (the ``--tier-diagnostics-every`` log and the demo); ``loss_history``
records each epoch's loss settings for the model card. The losses themselves are tier_openclip.loss,
tier_openclip.local_uniformity and tier_openclip.filip; the evaluations run during training are
tier_openclip.evaluation's.
"""
