"""``python -m tier_openclip.data_prep mimic-cxr ...``: ``tier-openclip prep`` as a program of its own."""

import sys

from .cli import main

sys.exit(main())
