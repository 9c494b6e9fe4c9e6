"""The per-step callback protocol every trainer speaks.

`callback(StepReport)` runs after every optimizer step; it returns False (or raises
`StopTraining`) to stop; anything else it raises propagates (ComfyUI's cancel does that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StepReport:
    """What a trainer tells its callback after each optimizer step."""

    step: int  # optimizer steps completed so far (1-based after the first step)
    total: int  # optimizer steps the run will take
    loss: float  # total training loss of this step
    preview: Any = None  # a PIL image when the trainer made one this step, else None
    stage: str = "train"  # "class_images" while personalization generates them: step / total count images, loss NaN


StepCallback = Callable[[StepReport], "bool | None"]


class StopTraining(Exception):
    """Raised by a callback to stop the run cleanly (same as returning False)."""


def notify(callback: StepCallback | None, report: StepReport) -> bool:
    """Calls `callback(report)`; True when the run should stop."""
    if callback is None:
        return False
    try:
        return callback(report) is False
    except StopTraining:
        return True
