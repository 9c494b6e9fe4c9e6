"""Building a transformers model from a config and a state dict we read ourselves.

`from_pretrained(None, config=..., state_dict=...)` maps old and new key names (transformers 5
renamed ViT's modules), never touches the network and never unpickles anything. What did not
fit is reported as an EvaluationWeightsError naming the keys.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch

from .weights import EvaluationWeightsError

IGNORED_MISSING = ("position_ids",)  # buffers some checkpoints carry and others do not


def build_from_state(model_class: Any, config: Any, state: dict[str, torch.Tensor], name: str, what: str,
                     ignore_unexpected: tuple[str, ...] = (), **kwargs: Any) -> torch.nn.Module:
    """`model_class` with the weights of `state` (every parameter required), in eval mode."""
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' loading progress bar
        try:
            model, info = model_class.from_pretrained(None, config=config, state_dict=state,
                                                      output_loading_info=True, **kwargs)
        except (RuntimeError, ValueError) as error:
            raise EvaluationWeightsError(f"{name} does not fit a {what} model of the inferred or given config: "
                                         f"{str(error).splitlines()[0][:300]}") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith(IGNORED_MISSING))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(ignore_unexpected))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        parts = [f"{len(missing)} missing ({', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})" if unexpected else "",
                 f"{len(mismatched)} of another shape ({', '.join(str(m[0]) for m in mismatched[:3])})"
                 if mismatched else ""]
        raise EvaluationWeightsError(f"{name} is not a complete {what} model: weights "
                                     f"{'; '.join(p for p in parts if p)}. Give the full model with its config.json")
    return model.eval().requires_grad_(False)
