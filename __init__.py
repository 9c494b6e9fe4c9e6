"""ComfyUI entry point of the InstructBooth node pack.

ComfyUI imports this folder as a package and calls `comfy_entrypoint()`. Anywhere else
(pytest imports this file while collecting, `pip install .` never does) nothing is
registered and nothing is imported: registration needs ComfyUI's `comfy_api`.
"""

import importlib.util

if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint"]
