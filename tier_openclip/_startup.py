"""Start-up hook: installed as the top-level module _tier_openclip_startup, imported by
tier_openclip_plugin.pth in every interpreter of the environment.

It must stay cheap: it only puts a finder on sys.meta_path. torch, open_clip and the plugin
load when the program itself imports ``open_clip`` (register the medical model configs) or
``open_clip_train`` (add ``--loss tier`` to its training loop). Set TIER_OPENCLIP_DISABLE=1 to
switch the hook off.
"""

import importlib.abc
import os
import sys

_AFTER_IMPORT = {
    "open_clip": "register_model_configs",
    "open_clip_train": "activate",
}


class _PluginFinder(importlib.abc.MetaPathFinder):
    """Lets the real finders locate the module, then runs a plugin function once it has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AFTER_IMPORT:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_plug(module, _exec=exec_module, _hook=_AFTER_IMPORT[fullname]):
            _exec(module)
            _run_hook(_hook)

        loader.exec_module = exec_then_plug
        return spec


def _run_hook(name):
    # A broken plugin must never break open_clip itself: warn and carry on stock.
    try:
        from tier_openclip import plugin

        getattr(plugin, name)()
    except Exception as exc:  # noqa: BLE001
        import warnings

        warnings.warn(f"tier-openclip plugin not active: {type(exc).__name__}: {exc}", stacklevel=2)


def install():
    if os.environ.get("TIER_OPENCLIP_DISABLE", "") not in ("", "0"):
        return
    if not any(isinstance(f, _PluginFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PluginFinder())


install()
