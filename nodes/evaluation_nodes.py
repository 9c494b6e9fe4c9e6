"""Evaluation in ComfyUI: load CLIP / DINO from models/evaluation, and measure a batch the way
InstructBooth and DreamBooth report it (CLIP-T, CLIP-I, DINO, optionally ImageReward)."""

from __future__ import annotations

import math

import torch
from comfy_api.latest import io, ui

from ..instructbooth.evaluation import load_embedder
from ..instructbooth.evaluation.scoring import METRIC_TITLES, SubjectScorer
from ..instructbooth.evaluation.weights import EvaluationWeightsError
from . import bridge
from .reward_nodes import IMAGE_REWARD

EVALUATION_MODEL = io.Custom("INSTRUCTBOOTH_EVALUATION_MODEL")
KINDS = ["auto", "clip", "dino"]
WHERE = ("put it in models/evaluation: a transformers folder as downloaded from the hub (e.g. "
         "openai/clip-vit-large-patch14 or facebook/dino-vits16 with config.json, model.safetensors and, for CLIP, "
         "the tokenizer files) or one .safetensors file, then refresh")


class EvaluationModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothEvaluationModelLoader",
            display_name="Load CLIP / DINO for Evaluation",
            category="InstructBooth",
            description="Loads a CLIP (for CLIP-T and CLIP-I) or DINO ViT-S/16 (for DINO) from models/evaluation, "
            "offline, for InstructBooth Evaluate.",
            inputs=[
                io.Combo.Input("model_file", options=bridge.model_file_options(bridge.EVALUATION_FOLDER),
                               tooltip="A file in models/evaluation: pick model.safetensors inside a hub folder "
                               "(clip-vit-large-patch14/model.safetensors; its config.json, preprocessor and "
                               "tokenizer files beside it are used), or a single .safetensors / .pth file."),
                io.Combo.Input("kind", options=KINDS, default="auto",
                               tooltip="clip, dino, or auto (told apart by the config or the weights' names)."),
            ],
            outputs=[EVALUATION_MODEL.Output(display_name="evaluation_model",
                                             tooltip="For the clip or dino input of InstructBooth Evaluate.")],
        )

    @classmethod
    def validate_inputs(cls, model_file) -> bool | str:
        if model_file is None:
            return True  # a linked input: checked when the node runs
        return _file_problem(model_file) or True

    @classmethod
    def execute(cls, model_file, kind) -> io.NodeOutput:
        problem = _file_problem(model_file)
        if problem:
            raise bridge.NodeInputError(problem)
        path = bridge.input_path_in_folder(bridge.EVALUATION_FOLDER, model_file)
        try:
            return io.NodeOutput(load_embedder(path, kind, device=bridge.training_device()))
        except EvaluationWeightsError as error:
            raise bridge.NodeInputError(str(error)) from None


class Evaluate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothEvaluate",
            display_name="InstructBooth Evaluate",
            category="InstructBooth",
            description="Measures a batch as InstructBooth and DreamBooth report it: CLIP-T (image vs prompt, "
            "cosine), CLIP-I and DINO (mean cosine with every reference photo), and ImageReward when connected. "
            "Shows a table per prompt and overall.",
            is_output_node=True,
            is_input_list=True,  # reference photos may come as a list of different sizes (Load Image Dataset)
            inputs=[
                io.Image.Input("images", tooltip="The generated images (a batch)."),
                io.String.Input("prompts", multiline=True, default="",
                                tooltip="The prompts as scored, written without the identifier ('a plushie riding "
                                "a horse', not 'sks plushie ...'): one line for the whole batch, or one line per "
                                "equal block of consecutive images."),
                io.Image.Input("references", tooltip="Photos of the subject (a batch or a list, any sizes)."),
                EVALUATION_MODEL.Input("clip", optional=True, tooltip="A CLIP from the loader: CLIP-T and CLIP-I."),
                EVALUATION_MODEL.Input("dino", optional=True, tooltip="A DINO ViT from the loader: DINO."),
                IMAGE_REWARD.Input("image_reward", optional=True, tooltip="ImageReward Loader: an extra column."),
                io.String.Input("label", default="", optional=True, tooltip="A name for the table (e.g. the LoRA)."),
            ],
            outputs=[
                io.Float.Output(display_name="clip_t", tooltip="Mean CLIP-T (cosine, -1..1); NaN without a CLIP."),
                io.Float.Output(display_name="clip_i", tooltip="Mean CLIP-I (cosine); NaN without a CLIP."),
                io.Float.Output(display_name="dino", tooltip="Mean DINO (cosine); NaN without a DINO."),
                io.Float.Output(display_name="image_reward", tooltip="Mean ImageReward; NaN without one."),
                io.String.Output(display_name="table", tooltip="The table shown on the node."),
            ],
        )

    @classmethod
    def execute(cls, images, prompts, references, clip=None, dino=None, image_reward=None, label=None
                ) -> io.NodeOutput:
        batch = torch.cat([bridge.images_to_bchw(b) for b in bridge.image_batches(images)])
        photos = [picture for b in bridge.image_batches(references) for picture in bridge.images_to_bchw(b)]
        clip, dino = _model(clip, "clip"), _model(dino, "dino")
        scorer = SubjectScorer(photos, clip, dino, _single(image_reward))
        texts = block_prompts(_single(prompts) or "", batch.shape[0])
        scores = scorer.score(batch, texts)
        table = metric_table(scores, texts, scorer.metrics, _single(label) or "")
        means = {m: sum(v) / len(v) for m, v in scores.items()}
        outputs = [means.get(m, math.nan) for m in ("clip_t", "clip_i", "dino", "image_reward")]
        return io.NodeOutput(*outputs, table, ui=ui.PreviewText(table))


def block_prompts(text: str, count: int) -> list[str]:
    """One prompt per image: one line for all, or L lines over L equal blocks of the batch."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise bridge.NodeInputError("write the prompt the images were made for (without the identifier), one line "
                                    "for the whole batch or one per block of images")
    if count % len(lines):
        raise bridge.NodeInputError(f"{count} images cannot be split into {len(lines)} equal blocks, one per prompt "
                                    "line; give one line, or as many lines as divide the batch")
    return [line for line in lines for _ in range(count // len(lines))]


def metric_table(scores: dict[str, list[float]], texts: list[str], metrics: list[str], label: str) -> str:
    """Per prompt (in order) and overall means, as fixed-width text."""
    titles = [METRIC_TITLES[m] for m in metrics]
    lines = [f"InstructBooth evaluation{f' - {label}' if label else ''}",
             f"{'prompt':<40} {'n':>3} " + " ".join(f"{t:>11}" for t in titles)]
    for prompt in dict.fromkeys(texts):
        rows = [i for i, t in enumerate(texts) if t == prompt]
        cells = [sum(scores[m][i] for i in rows) / len(rows) for m in metrics]
        lines.append(f"{prompt[:40]:<40} {len(rows):>3} " + " ".join(f"{c:>11.4f}" for c in cells))
    overall = [sum(scores[m]) / len(scores[m]) for m in metrics]
    lines.append(f"{'overall':<40} {len(texts):>3} " + " ".join(f"{c:>11.4f}" for c in overall))
    lines.append("CLIP-T: image-prompt cosine; CLIP-I, DINO: mean cosine with every reference photo")
    return "\n".join(lines)


def _model(value, kind: str):
    model = _single(value)
    if model is not None and getattr(model, "kind", None) != kind:
        raise bridge.NodeInputError(f"the {kind} input got a {getattr(model, 'kind', type(model).__name__)} model; "
                                    f"connect a loader set to {kind} (or auto with {kind} weights)")
    return model


def _single(value):
    """The one value of an input of this is_input_list node (None when missing)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _file_problem(name: str | None) -> str | None:
    if not name:
        return f"no CLIP or DINO weights chosen; {WHERE}"
    return bridge.name_problem(bridge.EVALUATION_FOLDER, name, must_exist=True)
