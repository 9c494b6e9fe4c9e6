"""Training runs keyed by what they depend on, so that a re-run reuses or resumes.

A run's folder is `<ComfyUI output>/instructbooth/<kind>-<name>-<key>/`, where the key is
a hash of the input weights, the images and every setting that changes the result. The
trainer writes its checkpoints there; a finished run leaves `result.safetensors` (and its
losses or metrics) that a later run with the same key loads instead of training; a run
that was cancelled has checkpoints the next one resumes from.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import folder_paths
import torch

from ..instructbooth.training import sampled_fingerprint
from . import bridge

RUNS_FOLDER = "instructbooth"
RESULT_FILE = "result.safetensors"
KEY_LENGTH = 16  # hex digits of the run key in folder names


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """`training.sampled_fingerprint`: names, shapes and evenly spaced values of every tensor
    (fast on large models; any fine-tune or LoRA changes them)."""
    return sampled_fingerprint(tensors)


def fingerprint_images(batches: list[torch.Tensor]) -> str:
    """A hash of every pixel of the images (8-bit, as they would be saved)."""
    digest = hashlib.sha256()
    for batch in batches:
        pixels = (batch.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
        digest.update(f"{tuple(pixels.shape)};".encode())
        digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()


def run_key(**parts: Any) -> str:
    """A short stable hash of JSON-able parts (fingerprints, settings, prompts)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def without(settings: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """`settings` without fields that do not change the trained weights."""
    return {k: v for k, v in settings.items() if k not in names}


class RunFolder:
    """Where one keyed run keeps its checkpoints and its finished result.

    The folder is named after the output name, but a run with the same key under another
    name (the user only renamed the LoRA) is found and reused or resumed, not repeated."""

    def __init__(self, kind: str, name: str, key: str):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()).strip("._") or "run"
        root = Path(folder_paths.get_output_directory()) / RUNS_FOLDER
        self.path = root / f"{kind}-{slug}-{key}"
        if not self.path.exists():
            same_key = sorted(root.glob(f"{kind}-*-{key}"), key=lambda p: (not (p / RESULT_FILE).is_file(), p.name))
            self.path = same_key[0] if same_key else self.path

    @property
    def result_path(self) -> Path:
        return self.path / RESULT_FILE

    def is_finished(self) -> bool:
        return self.result_path.is_file()

    def file(self, name: str) -> Path:
        return self.path / name

    def read_json(self, name: str, default: Any = None) -> Any:
        path = self.path / name
        if not path.is_file():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    def has_checkpoint(self) -> bool:
        return self.path.is_dir() and any(self.path.glob("checkpoint-*.pt"))


# --- one keyed training run, the same way in every training node ---------------------------------


TITLES = {"personalize": "Personalize", "rl": "RL", "pairs": "Pairs", "dpo": "DPO"}  # a run kind in the log


def keyed_run(kind: str, name: str, config: Any, work: Callable[[RunFolder], None], finished=None,
              **inputs: Any) -> RunFolder:
    """The run of `kind` keyed by `inputs` (fingerprints) and the config's settings that change the
    result (all but `config.RUN_CONTROL`): reused when finished, else `work(run)` trains or resumes
    in its folder. `finished(run)` tells a finished run (default: its result file exists)."""
    run = RunFolder(kind, name, run_key(**inputs, settings=without(config.to_dict(), config.RUN_CONTROL)))
    title = f"InstructBooth {TITLES.get(kind, kind)}"
    if (finished or RunFolder.is_finished)(run):
        bridge.log.info("%s: reusing the finished run in %s", title, run.path)
        return run
    bridge.log.info("%s: %s in %s", title, "resuming from the checkpoints" if run.has_checkpoint() else "training",
                    run.path)
    work(run)
    return run


def train_on_comfy_weights(state: dict[str, torch.Tensor], model, total: int,
                           train: Callable[[Any, Any], Any]) -> Any:
    """Builds the library's components from ComfyUI's weights (`state`, a trainable copy, emptied
    here) on the training device, inside `bridge.training_session()` (ComfyUI's models unloaded
    first, caches emptied after), and returns `train(components, progress)`; a cancel in the
    ComfyUI queue raises after the trainer has saved its checkpoint."""
    from ..instructbooth.checkpoint import components_from_ldm

    with bridge.training_session():
        components = components_from_ldm(state, device=bridge.training_device(),
                                         hints=bridge.architecture_hints(model), copy=False)
        state.clear()
        progress = bridge.ComfyProgress(total)
        result = train(components, progress)
        progress.raise_if_cancelled()
        return result


def publish_lora(run: RunFolder, model, clip, lora_name: str, weights: str):
    """The run's LoRA saved as `models/loras/<lora_name>` (metadata naming the base weights) and
    applied to ComfyUI's MODEL and CLIP: (model, clip, lora state, metadata)."""
    from ..instructbooth.lora import load_lora, save_lora

    lora, metadata = load_lora(run.result_path)
    metadata = bridge.with_base_weights(metadata, weights)
    save_lora(bridge.output_path_in_folder("loras", lora_name), lora, metadata)
    model, clip = bridge.apply_lora_to_comfy(model, clip, lora)
    return model, clip, lora, metadata


def interruptible(reward):
    """The reward, checking ComfyUI's cancel before each call (cancel also between sampling batches)."""
    def scored(images, prompts, metadata):
        bridge.check_interrupt()
        return reward(images, prompts, metadata)

    scored.name = getattr(reward, "name", type(reward).__name__)  # a pair folder records its judge's name
    return scored


def config_from_inputs(config_class: type, inputs: Mapping[str, Any], **fixed: Any):
    """A stage config from a node's setting inputs, which are named like its fields; `resolution`
    (a square image side, the nodes' one widget for it) sets `height` and `width` where the config
    has those instead. Inputs that are not fields (model, prompts, ...) are left out; `fixed`
    overrides. A bad value raises the config's own ValueError."""
    fields = config_class.__dataclass_fields__
    values = {name: value for name, value in inputs.items() if name in fields}
    if "resolution" in inputs and "resolution" not in fields:
        values.update(height=inputs["resolution"], width=inputs["resolution"])
    return config_class(**{**values, **fixed})
