"""Human feedback in ComfyUI (Lee et al. 2023): label a batch good/bad into a feedback folder,
load such folders, learn a reward from them, and load a learned reward file.

Folders live in ComfyUI's output directory: feedback in `output/<folder>/good|bad/`, learned
rewards in `output/instructbooth/learned_rewards/<name>.safetensors` (for the command line:
`--reward learned:<that file>`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..instructbooth.feedback import FeedbackError, parse_labels, read_feedback, write_feedback
from ..instructbooth.files import write_json
from ..instructbooth.reward_learning.features import ImageRewardBackbone
from ..instructbooth.reward_learning.from_feedback import learn_from_feedback, metrics_lines
from ..instructbooth.reward_learning.learned import LearnedReward, load_learned_reward, save_learned_reward
from ..instructbooth.reward_learning.train import RewardTrainConfig
from ..instructbooth.rewards import ImageReward
from . import bridge
from .reward_nodes import IMAGE_REWARD

FEEDBACK = io.Custom("INSTRUCTBOOTH_FEEDBACK")
LEARNED_FOLDER = "instructbooth/learned_rewards"  # inside ComfyUI's output directory
FEATURE_CACHE = "instructbooth/reward_features"
DEFAULTS = RewardTrainConfig()
LABEL_HELP = ("one letter per image in batch order: g good, b bad, s skip (e.g. 'gbbg'); leave empty to only "
              "look at the batch first")


def output_folder(name: str, what: str) -> Path:
    """A folder named in the UI, inside ComfyUI's output directory only."""
    root = Path(folder_paths.get_output_directory()).resolve()
    target = (root / bridge.safe_relative_name(name, what)).resolve()
    if root != target and root not in target.parents:
        raise bridge.NodeInputError(f"{name!r} would be outside the output folder; use a plain folder name")
    return target


def learned_reward_path(name: str) -> Path:
    """output/instructbooth/learned_rewards/<name>.safetensors (the suffix added when missing)."""
    text = str(name or "").strip()
    if text and not text.endswith(".safetensors"):
        text += ".safetensors"
    return output_folder(f"{LEARNED_FOLDER}/{text}" if text else "", "learned reward")


class SaveFeedback(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothSaveFeedback",
            display_name="Save Feedback (good / bad)",
            category="InstructBooth",
            description="Shows a batch; type a label per image and queue again to save each image with the prompt "
            "into output/<folder>/good or bad (the prompt beside it as a .txt). Learn a reward from the folder "
            "with Learn Reward from Feedback.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The batch to judge (keep the sampler's seed fixed while labelling)."),
                io.String.Input("prompt", multiline=True, default="", tooltip="The prompt the images were made from."),
                io.String.Input("labels", default="", tooltip=f"Labels: {LABEL_HELP}."),
                io.String.Input("folder", default="instructbooth_feedback",
                                tooltip="Feedback folder inside ComfyUI's output directory."),
            ],
            outputs=[io.String.Output(display_name="summary", tooltip="What was saved where.")],
        )

    @classmethod
    def execute(cls, images, prompt, labels, folder) -> io.NodeOutput:
        target = output_folder(folder, "feedback")
        count = int(images.shape[0])
        if not str(labels).strip():
            text = f"{count} images shown, nothing saved: type labels ({LABEL_HELP}) and queue again."
        else:
            try:
                marks = parse_labels(labels, count)
                written = write_feedback(target, images, prompt, marks)
            except FeedbackError as error:
                raise bridge.NodeInputError(str(error)) from None
            text = _saved_summary(written, count, target)
        return io.NodeOutput(text, ui=ui.PreviewImage(images, cls=cls))


def _saved_summary(written, count: int, target) -> str:
    """"saved 3 of 4 images to ... (2 good, 1 bad, 1 skipped; 1 already there; 1 moved to its new label)"."""
    good = sum(item.good for item in written)
    kept, moved = (sum(item.status == s for item in written) for s in ("kept", "relabelled"))
    repeats = f"; {kept} already there" * bool(kept) + f"; {moved} moved to its new label" * bool(moved)
    return (f"saved {len(written)} of {count} images to {target} ({good} good, {len(written) - good} bad, "
            f"{count - len(written)} skipped{repeats})")


class LoadFeedback(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothLoadFeedback",
            display_name="Load Feedback Folder",
            category="InstructBooth",
            description="Reads a feedback folder (good/ and bad/ with a .txt prompt beside each image) from the "
            "output directory, for Learn Reward from Feedback.",
            inputs=[io.String.Input("folder", default="instructbooth_feedback",
                                    tooltip="Feedback folder inside ComfyUI's output directory.")],
            outputs=[FEEDBACK.Output(display_name="feedback", tooltip="The labelled images and their prompts."),
                     io.String.Output(display_name="summary", tooltip="How many images are good and bad.")],
        )

    @classmethod
    def fingerprint_inputs(cls, folder) -> str:
        """Changes when files are added, moved or removed, so a re-queue reads the folder again."""
        try:
            root = output_folder(folder, "feedback")
        except bridge.NodeInputError:
            return "invalid"
        digest = hashlib.sha256()
        for path in sorted(root.glob("*/*")) if root.is_dir() else []:
            digest.update(f"{path.relative_to(root)}:{path.stat().st_mtime_ns}".encode())
        return digest.hexdigest()

    @classmethod
    def execute(cls, folder) -> io.NodeOutput:
        try:
            items = read_feedback(output_folder(folder, "feedback"))
        except FeedbackError as error:
            raise bridge.NodeInputError(str(error)) from None
        good = sum(item.good for item in items)
        text = f"{len(items)} labelled images: {good} good, {len(items) - good} bad"
        return io.NodeOutput(items, text, ui=ui.PreviewText(text))


class LearnReward(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothLearnReward",
            display_name="Learn Reward from Feedback",
            category="InstructBooth",
            description="Trains a small head on ImageReward's frozen image-text features to predict your good/bad "
            "labels, with Lee et al.'s prompt-classification loss over perturbed prompts. The result plugs into "
            "every image_reward input (Score, Best-of-N, RL, Preference Pairs) and is saved to "
            f"output/{LEARNED_FOLDER}/<name>.safetensors.",
            is_output_node=True,
            inputs=[
                FEEDBACK.Input("feedback", tooltip="From Load Feedback Folder."),
                IMAGE_REWARD.Input("image_reward", tooltip="From ImageReward Loader: the frozen backbone."),
                io.String.Input("name", default="my_reward", tooltip="File name of the learned reward."),
                io.Float.Input("lam", default=DEFAULTS.lam, min=0.0, max=10.0, step=0.05,
                               tooltip="λ: weight of the prompt-classification loss (0 = labels only)."),
                io.Int.Input("num_prompts", default=DEFAULTS.num_prompts, min=1, max=32,
                             tooltip="N: the true prompt + N-1 perturbed ones (count, colour, background words "
                             "and the taxonomy's one-attribute edits)."),
                io.Int.Input("epochs", default=DEFAULTS.epochs, min=1, max=10000, tooltip="Passes over the images."),
                io.Float.Input("validation_fraction", default=DEFAULTS.validation_fraction, min=0.0, max=0.9,
                               step=0.05, tooltip="Share of images held out to report accuracy and calibration."),
                io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Split, initialisation and batch order."),
            ],
            outputs=[IMAGE_REWARD.Output(display_name="learned_reward", tooltip="The learned reward (image_reward)."),
                     io.String.Output(display_name="report", tooltip="Held-out accuracy and calibration.")],
        )

    @classmethod
    def execute(cls, feedback, image_reward, name, lam, num_prompts, epochs, validation_fraction, seed) -> io.NodeOutput:
        if not isinstance(image_reward, ImageReward):
            raise bridge.NodeInputError("Learn Reward needs the ImageReward model itself as its backbone: connect "
                                        "ImageReward Loader (not a learned reward)")
        target = learned_reward_path(name)
        try:
            config = RewardTrainConfig(lam=lam, num_prompts=num_prompts, epochs=epochs,
                                       validation_fraction=validation_fraction, seed=seed)
            with torch.inference_mode(False), torch.enable_grad():
                backbone = ImageRewardBackbone(image_reward)
                result = learn_from_feedback(feedback, backbone, config, output_folder(FEATURE_CACHE, "cache"),
                                             callback=lambda epoch, losses: bridge.check_interrupt())
        except ValueError as error:
            raise bridge.NodeInputError(str(error)) from None
        save_learned_reward(target, result.head, backbone, config, result.metrics)
        write_json(target.with_name(f"{target.stem}_metrics.json"), {"metrics": result.metrics,
                                                                    "settings": config.to_dict()})
        report = "\n".join([f"learned reward: {target}", *metrics_lines(result.metrics)])
        return io.NodeOutput(LearnedReward(result.head, backbone), report, ui=ui.PreviewText(report))


class LearnedRewardLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothLearnedRewardLoader",
            display_name="Load Learned Reward",
            category="InstructBooth",
            description=f"Loads a learned reward from output/{LEARNED_FOLDER} onto the ImageReward it was trained on.",
            inputs=[
                IMAGE_REWARD.Input("image_reward", tooltip="From ImageReward Loader: the same weights it was trained on."),
                io.String.Input("name", default="my_reward", tooltip=f"File name in output/{LEARNED_FOLDER}."),
            ],
            outputs=[IMAGE_REWARD.Output(display_name="learned_reward", tooltip="For any image_reward input.")],
        )

    @classmethod
    def execute(cls, image_reward, name) -> io.NodeOutput:
        path = learned_reward_path(name)
        try:
            return io.NodeOutput(load_learned_reward(path, backbone=image_reward))
        except (ValueError, FileNotFoundError) as error:
            raise bridge.NodeInputError(str(error)) from None
