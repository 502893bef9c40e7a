"""python layout_check.py OUT: the default demo's clip arm (``--losses clip``, 16 pre-training
epochs, 3 starts) on a grounding layout with one rule lifted: a lung lesion may share an image with
an enlarged heart (tier_openclip.phantom.findings.compatible patched in this process; rendering in
this process, render_workers=1, so the patch holds). A check of the co-occurrence diagnosis only:
in such images the lesion's box may meet the heart's, so its grounding numbers are not the demo's.
"""
import sys
from pathlib import Path

import tier_openclip.phantom.findings as findings
import tier_openclip.phantom.sampling as sampling
from tier_openclip.demo import DemoOptions, run_demo

_original = findings.compatible


def compatible(a: findings.Site, b: findings.Site) -> bool:
    names = {a.name, b.name}
    if "cardiomegaly" in names and names & set(findings.LUNG_LESIONS):
        return True
    return _original(a, b)


findings.compatible = sampling.compatible = compatible
run_demo(DemoOptions(out=Path(sys.argv[1]), losses=("clip",), pretrain_epochs=16, render_workers=1, progress=False))
