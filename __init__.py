"""ComfyUI entry point of the InstructBooth node pack.

ComfyUI imports this folder as a package and calls `comfy_entrypoint()`. pytest may
import this file as a plain module: then nothing is registered and nothing is imported.
"""

if __package__:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint"]
