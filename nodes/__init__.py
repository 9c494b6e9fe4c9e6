"""The InstructBooth node pack for ComfyUI (V3 API).

Nodes are thin: each `execute` validates its inputs, converts ComfyUI types through
`bridge`, and calls one library function; `runs` keys training runs for reuse/resume.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import bridge


def node_classes() -> list[type[io.ComfyNode]]:
    from .lora_loader import LoadInstructBoothLoRA
    from .personalize_node import Personalize
    from .reward_nodes import ImageRewardBestOfN, ImageRewardLoader, ImageRewardScore
    from .rl_node import RLFineTune

    return [Personalize, ImageRewardLoader, ImageRewardScore, ImageRewardBestOfN, RLFineTune, *_preference_nodes(),
            LoadInstructBoothLoRA]


def _preference_nodes() -> list[type[io.ComfyNode]]:
    """The DPO nodes; the library's preference trainer is new, so a missing piece of it costs
    these two nodes only, not the whole pack (the log says why)."""
    try:
        from .preference_nodes import DPOAlign, PreferencePairs
    except ImportError as error:
        bridge.log.warning("InstructBooth: preference nodes unavailable (%s)", error)
        return []
    return [PreferencePairs, DPOAlign]


class InstructBoothExtension(ComfyExtension):
    async def on_load(self) -> None:
        bridge.register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()


async def comfy_entrypoint() -> InstructBoothExtension:
    bridge.register_model_folders()
    return InstructBoothExtension()
