"""The one place where the pack touches ComfyUI internals.

Everything ComfyUI-specific the nodes need lives here: reading MODEL/CLIP/VAE as an
LDM-format state dict for the library, handing LoRA tensors back to ComfyUI's own loader,
freeing ComfyUI's memory around training, progress/cancel/previews, image layouts, and
file names typed in the UI resolved safely inside their model folder.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path
from typing import Iterator

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
import torch

from ..instructbooth.checkpoint.architecture import ArchitectureHints

log = logging.getLogger("instructbooth")

IMAGE_REWARD_FOLDER = "ImageReward"
EVALUATION_FOLDER = "evaluation"  # CLIP / DINO weights for the Evaluate node (transformers folders or files)
WEIGHT_EXTENSIONS = {".pt", ".pth", ".safetensors", ".bin"}
SD15_CONFIGS = ("SD15", "SD15_instructpix2pix")  # ComfyUI's model_config classes of the SD1.x family


class NodeInputError(ValueError):
    """Bad input typed or wired in the UI; the message says what to change."""


# --- model folders and file names ---------------------------------------------------------


def register_model_folders() -> None:
    """Adds models/ImageReward and models/evaluation as model folders (called once by the extension)."""
    path = str(Path(folder_paths.models_dir) / IMAGE_REWARD_FOLDER)
    folder_paths.add_model_folder_path(IMAGE_REWARD_FOLDER, path, is_default=True)
    names = getattr(folder_paths, "folder_names_and_paths", {})
    if IMAGE_REWARD_FOLDER in names:
        names[IMAGE_REWARD_FOLDER][1].update(WEIGHT_EXTENSIONS)
    folder_paths.add_model_folder_path(EVALUATION_FOLDER, str(Path(folder_paths.models_dir) / EVALUATION_FOLDER),
                                       is_default=True)
    if EVALUATION_FOLDER in names:
        names[EVALUATION_FOLDER][1].update(WEIGHT_EXTENSIONS)


def model_file_options(folder_name: str) -> list[str]:
    """File names in a model folder for a dropdown (empty when the folder is unknown)."""
    try:
        return folder_paths.get_filename_list(folder_name)
    except KeyError:
        return []


def output_path_in_folder(folder_name: str, name: str, suffix: str = ".safetensors") -> Path:
    """Where a file named in the UI is written: inside the folder's first path, nowhere else.

    Sub-folders are allowed ("people/anna"); absolute paths, "..", "~" and empty names are not.
    """
    root = Path(folder_paths.get_folder_paths(folder_name)[0]).resolve()
    relative = safe_relative_name(name, folder_name)
    if relative.suffix != suffix:
        relative = relative.with_name(relative.name + suffix)
    target = (root / relative).resolve()
    if root not in target.parents:
        raise NodeInputError(f"{name!r} would be written outside the {folder_name} folder; use a plain file name")
    return target


def input_path_in_folder(folder_name: str, name: str) -> Path:
    """The file a dropdown or text field names, found inside the model folder only."""
    relative = safe_relative_name(name, folder_name)
    path = folder_paths.get_full_path(folder_name, relative.as_posix())
    if path is None:
        roots = ", ".join(folder_paths.get_folder_paths(folder_name))
        raise NodeInputError(f"no file {name!r} in the {folder_name} folder ({roots}); put it there and refresh")
    return Path(path)


MAX_NAME_BYTES = 120  # a name part; the run folder adds the node kind and a 16-character key


def safe_relative_name(name: str, folder_name: str) -> Path:
    """`name` as a relative path that stays inside a folder; raises NodeInputError otherwise."""
    text = (name or "").strip().replace("\\", "/")
    relative = Path(text)
    bad = (not text or not relative.parts or relative.is_absolute() or ".." in relative.parts
           or text.startswith("~") or "\x00" in text or ":" in relative.parts[0])
    if bad or relative.name in ("", "."):
        raise NodeInputError(f"file name {name!r} for the {folder_name} folder must be a relative name "
                             "without '..', e.g. 'instructbooth/sks_plushie'")
    longest = max(len(part.encode()) for part in relative.parts)
    if longest > MAX_NAME_BYTES:
        raise NodeInputError(f"file name {name[:40]!r}... has a part of {longest} bytes; keep each part of the "
                             f"name under {MAX_NAME_BYTES} (file systems allow 255 with the extension and run key)")
    return relative


def name_problem(folder_name: str, name: str | None, must_exist: bool) -> str | None:
    """Why a file name typed for `folder_name` cannot be used (for validate_inputs), else None.

    None (an input linked from another node, unknown at validation) is checked when the node runs."""
    if name is None:
        return None
    try:
        if must_exist:
            input_path_in_folder(folder_name, name)
        else:
            output_path_in_folder(folder_name, name)
    except NodeInputError as error:
        return str(error)
    return None


# --- ComfyUI models -> library --------------------------------------------------------------


def require_sd15(model) -> None:
    """Refuses non-SD1.x models by ComfyUI's own classification, before touching any weights."""
    config = model.model.model_config
    name = type(config).__name__
    if name not in SD15_CONFIGS:
        raise NodeInputError(
            f"this is a {name} model; InstructBooth trains Stable Diffusion 1.5 only. "
            "Load an SD1.5 checkpoint (e.g. v1-5-pruned-emaonly.safetensors) in Load Checkpoint."
        )


def comfy_state_dict(model, clip, vae) -> dict[str, torch.Tensor]:
    """MODEL + CLIP + VAE as one LDM-format state dict of ComfyUI's own (loaded) tensors.

    LoRAs chained before this node are baked in (ComfyUI patches weights when it loads a
    model, as its own checkpoint saver does). Read-only: take `trainable_copy` before
    anything unloads the models (unloading would undo those patches in place).
    """
    require_sd15(model)
    comfy.model_management.load_models_gpu([model, clip.load_model()], force_patch_weights=True,
                                           force_full_load=True)
    return model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd())


def trainable_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 CPU copies made outside inference mode, free to train (ComfyUI's tensors untouched)."""
    with torch.inference_mode(False):
        return {key: value.detach().to("cpu", torch.float32).clone() for key, value in state.items()}


def architecture_hints(model) -> ArchitectureHints:
    """Settings no tensor shape shows, read from ComfyUI's config of the model."""
    heads = int(model.model.model_config.unet_config.get("num_heads", 8))
    return ArchitectureHints(unet_attention_heads=heads if heads > 0 else 8)


def training_device() -> torch.device:
    return comfy.model_management.get_torch_device()


def free_comfy_memory() -> None:
    """ComfyUI does not track models we build ourselves: make room before training."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


@contextlib.contextmanager
def training_session() -> Iterator[None]:
    """ComfyUI's models unloaded before, ours collected after, inference mode off inside."""
    free_comfy_memory()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        gc.collect()
        comfy.model_management.soft_empty_cache()


# --- library -> ComfyUI ---------------------------------------------------------------------


def apply_lora_to_comfy(model, clip, lora_state: dict[str, torch.Tensor], strength_model: float = 1.0,
                        strength_clip: float = 1.0):
    """MODEL and CLIP patched by ComfyUI's own LoRA loader, as the stock LoraLoader does."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    return comfy.sd.load_lora_for_models(model, clip, lora_state, strength_model, strength_clip)


def images_to_bchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> [B, 3, H, W] float32 in [0, 1], a trainable copy."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise NodeInputError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(images.shape)}")
    with torch.inference_mode(False):
        return images[..., :3].permute(0, 3, 1, 2).to("cpu", torch.float32).clone()


def images_to_bhwc(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ComfyUI IMAGE [B, H, W, 3] float32 on the CPU."""
    return images.detach().permute(0, 2, 3, 1).to("cpu", torch.float32).contiguous()


def pil_to_image(picture) -> torch.Tensor:
    """A PIL image -> ComfyUI IMAGE [1, H, W, 3]."""
    import numpy as np

    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None].contiguous()


def image_batches(images: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """IMAGE batches from one batch or a list of them (sizes may differ); at least one image."""
    batches = [images] if isinstance(images, torch.Tensor) else [b for b in images if b is not None]
    for batch in batches:
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise NodeInputError(f"expected IMAGE batches [B, H, W, 3], got {shape}")
    if sum(batch.shape[0] for batch in batches) == 0:
        raise NodeInputError("no images: connect photos of the subject (3-10 is typical), e.g. from Load Image")
    with torch.inference_mode(False):
        return [batch.detach().to("cpu", torch.float32).clone() for batch in batches if batch.shape[0]]


# --- progress, cancel and previews ------------------------------------------------------------


class ComfyProgress:
    """Progress bar, cancel and previews for a library training callback (`StepReport`).

    Cancel (ComfyUI raises InterruptProcessingException from the progress bar or the
    interrupt check) is turned into a clean stop: the callback returns False, so the
    trainer finishes its step and writes its checkpoint; the node then calls
    `raise_if_cancelled()` so that ComfyUI still sees an interrupted run.
    """

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)
        self.cancelled = False

    def __call__(self, report) -> bool:
        try:
            comfy.model_management.throw_exception_if_processing_interrupted()
            self.bar.update_absolute(int(report.step), int(report.total), preview_tuple(getattr(report, "preview", None)))
        except comfy.model_management.InterruptProcessingException:
            self.cancelled = True
            return False
        return True

    def raise_if_cancelled(self) -> None:
        if self.cancelled:
            raise comfy.model_management.InterruptProcessingException()


def check_interrupt() -> None:
    """Raises ComfyUI's interrupt exception when the user pressed cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def preview_tuple(image):
    """A PIL image or a tensor [3, H, W] in [0, 1] -> ComfyUI's ("JPEG", PIL image, max size)."""
    if image is None:
        return None
    from PIL import Image

    from ..instructbooth.images import tensor_to_pil

    if not isinstance(image, Image.Image):
        image = tensor_to_pil(image)
    return ("JPEG", image.convert("RGB"), 512)


def with_base_weights(metadata, weights_fingerprint: str):
    """LoRA metadata naming the base model by its weights when the file is unknown (ComfyUI
    passes nodes a MODEL, not its checkpoint file): base_model_hash "weights:<fingerprint>"."""
    import dataclasses

    if metadata.base_model_hash:
        return metadata
    return dataclasses.replace(metadata, base_model_hash=f"weights:{weights_fingerprint}")
