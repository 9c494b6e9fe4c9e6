"""Personalize: teach SD1.5 a subject from a few photos (DreamBooth-style LoRA)."""

from __future__ import annotations

from comfy_api.latest import io

from ..instructbooth.personalize import PersonalizeConfig, personalize, save_result
from ..instructbooth.subject_data import SubjectDataError, check_identifier
from . import bridge
from .runs import RunFolder, config_from_inputs, fingerprint_images, fingerprint_tensors, keyed_run, publish_lora, train_on_comfy_weights

DEFAULTS = PersonalizeConfig()
LORA_MODEL, LOSS_MAP = io.Custom("LORA_MODEL"), io.Custom("LOSS_MAP")
IMAGE_INPUTS = ("images", "class_images")  # inputs that stay lists (several batches of any size)
# Settings that do not change the trained LoRA (left out of the run key; a resumed run may change them).

class Personalize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothPersonalize",
            display_name="InstructBooth Personalize",
            category="InstructBooth",
            description="Teaches the model a subject from 3-10 photos with a LoRA bound to a rare identifier "
            "('sks plushie'). Saves the LoRA in models/loras; a re-run with the same inputs reuses it, a "
            "cancelled run resumes from its last checkpoint.",
            is_input_list=True,  # photos may come as batches or lists of different sizes
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 model from Load Checkpoint (SDXL and others are refused)."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint (encodes the photos)."),
                io.Image.Input("images", tooltip="Photos of the subject: a batch or a list (e.g. Load Image Dataset "
                               "from Folder); any sizes, centre-cropped to squares."),
                io.String.Input("identifier", default=DEFAULTS.identifier,
                                tooltip="A rare one-word token that will mean your subject, e.g. 'sks'."),
                io.String.Input("class_noun", default=DEFAULTS.class_noun,
                                tooltip="What the subject is, e.g. 'dog', 'plushie', 'backpack'."),
                io.String.Input("description", default="", tooltip="Optional detail for unusual subjects, e.g. "
                                "'with a blue star on its belly'; added to the training prompt."),
                io.String.Input("lora_name", default="instructbooth/sks_plushie",
                                tooltip="File name of the LoRA in models/loras (sub-folders allowed; no '..')."),
                io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=100000,
                             tooltip="Optimizer steps; 400-800 suits 3-10 photos at the default learning rate."),
                io.Float.Input("learning_rate", default=DEFAULTS.learning_rate, min=1e-7, max=1e-2, step=1e-6,
                               round=1e-7, tooltip="AdamW learning rate of the LoRA."),
                io.Int.Input("lora_rank", default=DEFAULTS.lora_rank, min=1, max=128,
                             tooltip="LoRA rank (size); 4-16 is typical for one subject. Alpha equals the rank."),
                io.Int.Input("resolution", default=DEFAULTS.resolution, min=64, max=2048, step=64,
                             tooltip="Training image side in pixels (512 for SD1.5)."),
                io.Int.Input("batch_size", default=DEFAULTS.batch_size, min=1, max=64,
                             tooltip="Photos per step (more needs more memory)."),
                io.Boolean.Input("flip", default=DEFAULTS.flip,
                                 tooltip="Random horizontal flips of the photos. Off by default: they mirror "
                                 "asymmetric subjects (text, a logo on one side)."),
                io.Boolean.Input("train_text_encoder", default=DEFAULTS.train_text_encoder,
                                 tooltip="Also train a LoRA on the text encoder (stronger binding, more memory)."),
                io.Boolean.Input("prior_preservation", default=DEFAULTS.prior_preservation,
                                 tooltip="Also train on images of the class so that the class noun keeps its "
                                 "meaning (uses class_images, or generates num_class_images first)."),
                io.Int.Input("num_class_images", default=DEFAULTS.num_class_images, min=1, max=1000,
                             tooltip="Class images generated for prior preservation when none are connected."),
                io.Combo.Input("mixed_precision", options=["no", "fp16", "bf16"], default=DEFAULTS.mixed_precision,
                               tooltip="16-bit frozen weights (fp16/bf16) fit 8 GB GPUs; 'no' is full float32."),
                io.Boolean.Input("gradient_checkpointing", default=DEFAULTS.gradient_checkpointing,
                                 tooltip="Recompute activations in the backward pass: less memory, about 30% slower."),
                io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds the LoRA init, data order, noise and timesteps (same seed, same LoRA)."),
                io.Int.Input("checkpoint_every", default=DEFAULTS.checkpoint_every, min=0, max=100000,
                             tooltip="Steps between checkpoints (a cancelled run resumes from the last); 0 = at the end."),
                io.Int.Input("preview_every", default=0, min=0, max=100000,
                             tooltip="Steps between preview images of 'a photo of <identifier> <class>' (0 = none)."),
                io.Image.Input("class_images", optional=True,
                               tooltip="Optional photos of the class for prior preservation (instead of generated ones)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the subject LoRA applied."),
                io.Clip.Output(display_name="CLIP", tooltip="The text encoder with the subject LoRA applied."),
                LORA_MODEL.Output(display_name="lora", tooltip="The LoRA weights (kohya names), e.g. for RL Fine-Tune."),
                LOSS_MAP.Output(display_name="loss_map", tooltip="Training loss per step (for Plot Loss Graph)."),
                io.String.Output(display_name="trigger_phrase", tooltip="'<identifier> <class noun>' to use in prompts."),
            ],
        )

    @classmethod
    def validate_inputs(cls, identifier, lora_name) -> bool | str:
        identifier, lora_name = _first(identifier), _first(lora_name)
        if identifier is not None:
            try:
                check_identifier(identifier)
            except SubjectDataError as error:
                return str(error)
        return bridge.name_problem("loras", lora_name, must_exist=False) or True

    @classmethod
    def execute(cls, **inputs) -> io.NodeOutput:
        values = {k: (v if k in IMAGE_INPUTS else _first(v)) for k, v in inputs.items()}
        config = _config(values)
        images = bridge.image_batches(values["images"])
        class_images = bridge.image_batches(values["class_images"]) if values.get("class_images") else None
        state = bridge.comfy_state_dict(values["model"], values["clip"], values["vae"])
        weights = fingerprint_tensors(state)

        def train(run: RunFolder) -> None:
            result = train_on_comfy_weights(bridge.trainable_copy(state), values["model"], config.steps, lambda parts,
                                            progress: personalize(parts, images, config, progress, run.path,
                                                                  class_images=class_images))
            save_result(result, run.result_path)

        run = keyed_run("personalize", values["lora_name"], config, train, weights=weights,
                        images=fingerprint_images(images),
                        class_images=fingerprint_images(class_images) if class_images else None)
        model, clip, lora, metadata = publish_lora(run, values["model"], values["clip"], values["lora_name"], weights)
        losses = run.read_json("result.loss.json", {}).get("loss", [])
        return io.NodeOutput(model, clip, lora, {"loss": losses}, metadata.trigger_phrase)


def _config(values: dict) -> PersonalizeConfig:
    """The node's inputs are named like PersonalizeConfig's fields; a preview every N steps is a
    validation image of the instance prompt."""
    return config_from_inputs(
        PersonalizeConfig, values, **{k: values[k].strip() for k in ("identifier", "class_noun", "description")},
        validation_prompts=("a photo of {id} {cls}{desc}",) if values["preview_every"] else (),
        validation_every=values["preview_every"])


def _first(value):
    """The single value of a widget input of an is_input_list node (None for a missing one)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value
