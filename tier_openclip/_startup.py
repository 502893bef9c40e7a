"""Start-up hook: installed as the top-level module _tier_openclip_startup, imported by
tier_openclip_plugin.pth in every interpreter of the environment.

It must stay cheap: it only puts a finder on sys.meta_path. torch, open_clip and the plugin
load when the program itself imports ``open_clip`` (register the medical model configs) or
``open_clip_train`` (add ``--loss tier`` to its training loop). Set TIER_OPENCLIP_DISABLE=1 to
switch the hook off.

Switched off (or when the plugin fails to load), the hook still guards one thing, without loading
anything: open_clip's parser would read ``--loss tier`` as its own ``--loss-dist-impl tier`` (argparse
prefix matching) and train plain CLIP, so open_clip_train's parse_args refuses the plugin's flags
with one message naming ``python -m tier_openclip.train``.
"""

import importlib.abc
import os
import sys

def _register_model_configs(_module):
    from tier_openclip.models import register_model_configs

    register_model_configs()


def _activate(_module):
    from tier_openclip.training.plugin import activate

    activate()


# imported module -> what runs once it has executed
_AFTER_IMPORT = {
    "open_clip": _register_model_configs,
    "open_clip_train": _activate,
}


class _PluginFinder(importlib.abc.MetaPathFinder):
    """Lets the real finders locate the module, then runs a plugin function once it has executed."""

    hooks = _AFTER_IMPORT

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.hooks:
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

        def exec_then_plug(module, _exec=exec_module, _hook=self.hooks[fullname]):
            _exec(module)
            _run_hook(_hook, module)

        loader.exec_module = exec_then_plug
        return spec


def _run_hook(hook, module):
    # A broken plugin must never break open_clip itself: warn and carry on stock (guarded).
    try:
        hook(module)
    except Exception as exc:  # noqa: BLE001
        import warnings

        warnings.warn(f"tier-openclip plugin not active: {type(exc).__name__}: {exc}", stacklevel=2)
        if hook is _activate:
            try:
                import open_clip_train.params as params
            except Exception:  # noqa: BLE001
                return
            _guard_parse_args(params, f"the tier-openclip plugin failed to load ({type(exc).__name__}: {exc})")


def _plugin_flag(arg):
    """Whether a command-line argument is (an abbreviation of) a tier-openclip flag: --loss, --los,
    --tier-*, --lu-*, --filip-*. open_clip has no flag of these names; its --loss-dist-impl is left alone.
    A copy of tier_openclip.training.plugin_args.is_plugin_flag, the rule's owner (this hook may import
    nothing of tier_openclip); tests/test_plugin.py checks the two agree."""
    name = arg.split("=", 1)[0]
    return name in ("--loss", "--los") or name.startswith(("--tier", "--lu-", "--filip"))


def _guard_parse_args(params, why):
    """open_clip_train.params.parse_args, refusing the plugin's flags while the plugin is not active."""
    original = params.parse_args

    def parse_args(args):
        plugin = sys.modules.get("tier_openclip.training.plugin")
        if not (plugin is not None and plugin.is_active()):  # python -m tier_openclip.train activates it
            names = []
            for arg in args:
                if arg == "--":
                    break
                if arg.startswith("--") and _plugin_flag(arg):
                    names.append(arg.split("=", 1)[0])
            if names:
                sys.stderr.write(f"tier-openclip: {names[0]} is a tier-openclip flag, but {why}, and open_clip "
                                 f"alone would {'train plain CLIP' if names[0] in ('--loss', '--los') else 'reject it'}"
                                 ". Run the same command as `python -m tier_openclip.train ARGS` (torchrun: -m "
                                 "tier_openclip.train), which loads the plugin explicitly.\n")
                raise SystemExit(2)
        return original(args)

    parse_args.__wrapped__ = original
    params.parse_args = parse_args


def _guard_when_disabled(params):
    _guard_parse_args(params, "the plugin is disabled (TIER_OPENCLIP_DISABLE="
                              f"{os.environ.get('TIER_OPENCLIP_DISABLE')})")


class _DisabledFinder(_PluginFinder):
    """With the hook switched off: only the guard on open_clip_train's parse_args."""

    hooks = {"open_clip_train.params": _guard_when_disabled}


def install():
    if os.environ.get("TIER_OPENCLIP_DISABLE", "") not in ("", "0"):
        if not any(isinstance(f, _DisabledFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _DisabledFinder())
        return
    if not any(type(f) is _PluginFinder for f in sys.meta_path):
        sys.meta_path.insert(0, _PluginFinder())


install()
