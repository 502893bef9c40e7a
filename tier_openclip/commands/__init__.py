"""The ``tier-openclip`` command line: ``cli`` (the command and its subcommands, ``main``), ``eval_cli``
(``tier-openclip eval``, whose tasks live in tier_openclip.evaluation) and ``convert`` (``tier-openclip
convert``). The other subcommands keep their parser beside the code they run (data_prep.cli,
evaluation.analyze, evaluation.heatmap, hub.cli, demo.cli), and every one shares the model flags of
tier_openclip.cli_common; nothing but ``python -m tier_openclip`` and the ``tier-openclip`` script
imports this package.
"""
