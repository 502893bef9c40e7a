"""Build hook: an editable install (`pip install -e .`) uses the checkout's kernels/ and data_prep/.

The wheel maps kernels/ and data_prep/ under tier_openclip (pyproject's force-include). An editable
install would copy them there too, as files that no edit reaches; without those copies,
tier_openclip/__init__.py finds the live folders beside the package. Only the start-up hook
(the .pth file and the module it imports) is installed.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

STARTUP = {
    "tier_openclip_plugin.pth": "tier_openclip_plugin.pth",
    "tier_openclip/_startup.py": "_tier_openclip_startup.py",
}


class EditableBuildHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            build_data["force_include_editable"] = dict(STARTUP)
