"""InstructBooth: subject personalization and reward-guided alignment for Stable Diffusion 1.5.

The library never imports ComfyUI; `nodes/` adapts it to ComfyUI.
"""

__version__ = "0.1.0"
