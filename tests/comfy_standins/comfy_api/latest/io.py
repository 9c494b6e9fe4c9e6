"""Stand-in for comfy_api.latest.io (the subset the pack uses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Input:
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None, **extra: Any):
        self.id, self.display_name, self.optional, self.tooltip, self.extra = id, display_name, optional, tooltip, extra
        self.default = extra.get("default")
        self.options = extra.get("options")
        self.min, self.max = extra.get("min"), extra.get("max")


class Output:
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None, is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _comfy_type(io_type: str, widget: bool = False):
    input_cls = type("Input", (Input,), {"io_type": io_type, "widget": widget})
    output_cls = type("Output", (Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


Model = _comfy_type("MODEL")
Clip = _comfy_type("CLIP")
Vae = _comfy_type("VAE")
Image = _comfy_type("IMAGE")
Mask = _comfy_type("MASK")
Latent = _comfy_type("LATENT")
Conditioning = _comfy_type("CONDITIONING")
Int = _comfy_type("INT", widget=True)
Float = _comfy_type("FLOAT", widget=True)
String = _comfy_type("STRING", widget=True)
Boolean = _comfy_type("BOOLEAN", widget=True)
Combo = _comfy_type("COMBO", widget=True)

_CUSTOM: dict[str, type] = {}


def Custom(io_type: str):
    return _CUSTOM.setdefault(io_type, _comfy_type(io_type))


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_experimental: bool = False
    not_idempotent: bool = False


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs):
        raise NotImplementedError


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: str | None = None):
        self.args, self.ui = args, ui

    def __getitem__(self, index: int) -> Any:
        return self.args[index]
