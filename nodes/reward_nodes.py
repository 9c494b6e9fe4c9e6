"""ImageReward in ComfyUI: load the model, score images, keep the best of N."""

from __future__ import annotations

from pathlib import Path

import torch
from comfy_api.latest import io, ui

from ..instructbooth.rewards import ImageReward, ImageRewardConfig, best_of_n, parse_dtype
from ..instructbooth.rewards.image_reward.weights import DOWNLOAD_HINT
from . import bridge

IMAGE_REWARD = io.Custom("IMAGE_REWARD")
DTYPES = ["auto", "float32", "float16", "bfloat16"]


class ImageRewardLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothImageRewardLoader",
            display_name="ImageReward Loader",
            category="InstructBooth",
            description="Loads ImageReward (human-preference score of an image for a prompt) from models/ImageReward. "
            "Works with the official ImageReward.pt or a safetensors copy; no extra packages needed.",
            inputs=[
                io.Combo.Input("reward_file", options=bridge.model_file_options(bridge.IMAGE_REWARD_FOLDER),
                               tooltip="Weights in models/ImageReward: ImageReward.pt (1.79 GB) downloaded by hand from "
                               "huggingface.co/THUDM/ImageReward (ComfyUI's model dialog fetches only .safetensors), "
                               "or its safetensors copy from 'instructbooth convert ImageReward.pt'. A '<name>.json' "
                               "or 'config.json' beside the file gives the sizes of non-standard models."),
                io.Combo.Input("dtype", options=DTYPES, default="auto",
                               tooltip="Weights and compute precision; auto = float16 on a GPU, float32 on the CPU. "
                               "float32 is the reference. float16 halves memory and kept every ranking in a full-size "
                               "check against the reference (scores within 0.0023) but is ~4-5x slower on a CPU; "
                               "bfloat16 moved scores up to 0.024 and reordered close images (the best one stayed)."),
            ],
            outputs=[IMAGE_REWARD.Output(display_name="image_reward", tooltip="The scorer, for Score, Best-of-N and RL.")],
        )

    @classmethod
    def validate_inputs(cls, reward_file) -> bool | str:
        return True if reward_file is None else _weights_problem(reward_file) or True  # None: a linked input

    @classmethod
    def execute(cls, reward_file, dtype) -> io.NodeOutput:
        problem = _weights_problem(reward_file)
        if problem:
            raise bridge.NodeInputError(problem)
        path = bridge.input_path_in_folder(bridge.IMAGE_REWARD_FOLDER, reward_file)
        device = bridge.training_device()
        return io.NodeOutput(ImageReward.load(path, _sidecar_config(path), device, _dtype(dtype, device)))


class ImageRewardScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothImageRewardScore",
            display_name="ImageReward Score",
            category="InstructBooth",
            description="Scores every image of a batch for a prompt with ImageReward (higher is better; about "
            "-2..2, 0 is an average image).",
            is_output_node=True,
            inputs=[
                IMAGE_REWARD.Input("image_reward", tooltip="From ImageReward Loader."),
                io.Image.Input("images", tooltip="The images to score (a batch)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the images should follow, written without the identifier "
                                "(ImageReward does not know 'sks')."),
            ],
            outputs=[
                io.Float.Output(display_name="scores", is_output_list=True, tooltip="One score per image, in batch order."),
                io.String.Output(display_name="table", tooltip="The scores as a text table, best first."),
            ],
        )

    @classmethod
    def execute(cls, image_reward, images, prompt) -> io.NodeOutput:
        scores = image_reward.score(images, prompt, layout="BHWC").float().cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        table = score_table(scores[order], order, prompt)
        return io.NodeOutput(scores.tolist(), table, ui=ui.PreviewText(table))


class ImageRewardBestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothBestOfN",
            display_name="ImageReward Best-of-N",
            category="InstructBooth",
            description="Keeps the k images of a batch that ImageReward scores highest for the prompt, best first "
            "(rejection sampling: generate N, keep the best).",
            inputs=[
                IMAGE_REWARD.Input("image_reward", tooltip="From ImageReward Loader."),
                io.Image.Input("images", tooltip="N candidate images (a batch, e.g. KSampler with batch_size N)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the images should follow (without the identifier)."),
                io.Int.Input("k", default=1, min=1, max=4096, tooltip="How many of the best images to keep."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The k best images, best first."),
                io.Float.Output(display_name="scores", is_output_list=True, tooltip="Their scores, best first."),
                io.String.Output(display_name="table", tooltip="Rank, position in the input batch and score."),
            ],
        )

    @classmethod
    def execute(cls, image_reward, images, prompt, k) -> io.NodeOutput:
        if k > images.shape[0]:
            raise bridge.NodeInputError(f"k is {k} but the batch has only {images.shape[0]} images; lower k "
                                        "or generate more (KSampler batch_size)")
        best = best_of_n(image_reward, images, prompt, k)
        table = score_table(best.scores, best.indices, prompt)
        return io.NodeOutput(best.images, best.scores.tolist(), table, ui=ui.PreviewText(table))


def score_table(scores: torch.Tensor, positions: torch.Tensor, prompt: str) -> str:
    """Rank, batch position and score per row (rows already in rank order)."""
    lines = [f"ImageReward for: {prompt!r}", "rank  image  score"]
    lines += [f"{rank:>4}  {int(pos):>5}  {float(score):+.4f}"
              for rank, (score, pos) in enumerate(zip(scores.tolist(), positions.tolist()), start=1)]
    return "\n".join(lines)


def _weights_problem(name: str | None) -> str | None:
    folder = bridge.IMAGE_REWARD_FOLDER
    if not name:
        roots = ", ".join(_folder_roots(folder))
        return f"no ImageReward weights in models/{folder} ({roots}); {DOWNLOAD_HINT}, put it there and refresh"
    problem = bridge.name_problem(folder, name, must_exist=True)
    return f"{problem}. {DOWNLOAD_HINT[0].upper()}{DOWNLOAD_HINT[1:]}." if problem else None


def _folder_roots(folder: str) -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        return []


def _sidecar_config(path: Path) -> ImageRewardConfig | None:
    """Sizes from `<stem>.json` or `config.json` beside the weights, if present."""
    for candidate in (path.with_suffix(".json"), path.parent / "config.json"):
        if candidate.is_file():
            return ImageRewardConfig.from_json(candidate)
    return None


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    return parse_dtype(name)
