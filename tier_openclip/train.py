"""``python -m tier_openclip.train ARGS``: open_clip_train.main with the plugin, hook or no hook.

Use it where the start-up hook does not run (TIER_OPENCLIP_DISABLE=1, or ``python -S``);
it takes exactly the flags of ``python -m open_clip_train.main --loss tier ...``.
"""

from __future__ import annotations

import runpy
import sys

from tier_openclip.errors import error_line
from tier_openclip.training import plugin


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        plugin.activate(strict=True)
    except plugin.adapter.OpenClipIncompatible as exc:
        raise SystemExit(error_line(exc)) from None
    sys.argv = ["open_clip_train.main", *argv]
    runpy.run_module("open_clip_train.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
