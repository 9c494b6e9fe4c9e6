"""Load InstructBooth LoRA: a LoRA file from models/loras onto MODEL and CLIP, plus its trigger phrase."""

from __future__ import annotations

from comfy_api.latest import io

from ..instructbooth.lora import load_lora
from . import bridge


class LoadInstructBoothLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothLoadLoRA",
            display_name="Load InstructBooth LoRA",
            category="InstructBooth",
            description="Applies a LoRA made by InstructBooth (or any kohya SD1.5 LoRA) and returns the "
            "trigger phrase stored in the file, e.g. 'sks plushie', to put in your prompt.",
            inputs=[
                io.Model.Input("model", tooltip="The SD1.5 model (from Load Checkpoint)."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint."),
                io.Combo.Input("lora_name", options=bridge.model_file_options("loras"),
                               tooltip="A LoRA file in models/loras."),
                io.Float.Input("strength_model", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="How strongly the LoRA changes the UNet (1 = as trained)."),
                io.Float.Input("strength_clip", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="How strongly the LoRA changes the text encoder (1 = as trained)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The model with the LoRA applied."),
                io.Clip.Output(display_name="CLIP", tooltip="The text encoder with the LoRA applied."),
                io.String.Output(display_name="trigger_phrase",
                                 tooltip="The identifier phrase stored in the file ('' when it has none)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        return bridge.name_problem("loras", lora_name, must_exist=True) or True

    @classmethod
    def execute(cls, model, clip, lora_name, strength_model, strength_clip) -> io.NodeOutput:
        path = bridge.input_path_in_folder("loras", lora_name)
        state, metadata = load_lora(path)
        model, clip = bridge.apply_lora_to_comfy(model, clip, state, strength_model, strength_clip)
        return io.NodeOutput(model, clip, metadata.trigger_phrase or "")
