"""The InstructBooth node pack for ComfyUI (V3 API).

Nodes are thin: each `execute` validates its inputs, converts ComfyUI types through
`bridge`, and calls one library function; `runs` keys training runs for reuse/resume.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import bridge


def node_classes() -> list[type[io.ComfyNode]]:
    """Every node of the pack; an import error here is a broken install and surfaces as one."""
    from .evaluation_nodes import Evaluate, EvaluationModelLoader
    from .feedback_nodes import LearnedRewardLoader, LearnReward, LoadFeedback, SaveFeedback
    from .lora_loader import LoadInstructBoothLoRA
    from .personalize_node import Personalize
    from .preference_nodes import DPOAlign, PreferencePairs
    from .reward_nodes import ImageRewardBestOfN, ImageRewardLoader, ImageRewardScore
    from .rl_node import RLFineTune

    return [Personalize, ImageRewardLoader, ImageRewardScore, ImageRewardBestOfN, RLFineTune, PreferencePairs, DPOAlign,
            LoadInstructBoothLoRA, EvaluationModelLoader, Evaluate,
            SaveFeedback, LoadFeedback, LearnReward, LearnedRewardLoader]


class InstructBoothExtension(ComfyExtension):
    async def on_load(self) -> None:
        bridge.register_model_folders()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_classes()


async def comfy_entrypoint() -> InstructBoothExtension:
    bridge.register_model_folders()
    return InstructBoothExtension()
