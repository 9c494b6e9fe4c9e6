"""The one place where the pack touches ComfyUI internals.

Everything ComfyUI-specific the nodes need lives here: turning MODEL/CLIP/VAE into the
library's `SDComponents`, handing LoRA tensors back to ComfyUI's own loader, freeing
ComfyUI's memory before training, progress/cancel, and file names typed in the UI
resolved safely inside their model folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths

IMAGE_REWARD_FOLDER = "ImageReward"
WEIGHT_EXTENSIONS = {".pt", ".pth", ".safetensors", ".bin"}


class NodeInputError(ValueError):
    """Bad input typed or wired in the UI; the message says what to change."""


def register_model_folders() -> None:
    """Adds models/ImageReward as a model folder (called once by the extension)."""
    path = str(Path(folder_paths.models_dir) / IMAGE_REWARD_FOLDER)
    folder_paths.add_model_folder_path(IMAGE_REWARD_FOLDER, path, is_default=True)
    names = getattr(folder_paths, "folder_names_and_paths", {})
    if IMAGE_REWARD_FOLDER in names:
        names[IMAGE_REWARD_FOLDER][1].update(WEIGHT_EXTENSIONS)


def model_file_options(folder_name: str) -> list[str]:
    """File names in a model folder for a dropdown; empty folders give a hint entry."""
    try:
        return folder_paths.get_filename_list(folder_name)
    except KeyError:
        return []


def output_path_in_folder(folder_name: str, name: str, suffix: str = ".safetensors") -> Path:
    """Where a file named in the UI is written: inside the folder's first path, nowhere else.

    Sub-folders are allowed ("people/anna"); absolute paths, "..", and empty names are not.
    """
    root = Path(folder_paths.get_folder_paths(folder_name)[0]).resolve()
    relative = _safe_relative(name, folder_name)
    if relative.suffix != suffix:
        relative = relative.with_name(relative.name + suffix)
    target = (root / relative).resolve()
    if root not in target.parents:
        raise NodeInputError(f"{name!r} would be written outside the {folder_name} folder; use a plain file name")
    return target


def input_path_in_folder(folder_name: str, name: str) -> Path:
    """The file a dropdown or text field names, found inside the model folder only."""
    relative = _safe_relative(name, folder_name)
    path = folder_paths.get_full_path(folder_name, str(relative))
    if path is None:
        roots = ", ".join(folder_paths.get_folder_paths(folder_name))
        raise NodeInputError(f"no file {name!r} in the {folder_name} folder ({roots}); put it there and refresh")
    return Path(path)


def _safe_relative(name: str, folder_name: str) -> Path:
    text = (name or "").strip().replace("\\", "/")
    relative = Path(text)
    if not text or relative.is_absolute() or ".." in relative.parts or text.startswith("~"):
        raise NodeInputError(f"file name {name!r} for the {folder_name} folder must be a relative name without '..'")
    return relative


def components_from_comfy(model, clip, vae):
    """Library components holding the weights of ComfyUI's MODEL, CLIP and VAE.

    LoRAs the user chained before this node are baked in (ComfyUI patches weights when it
    loads a model). Tensors are cloned out of inference mode so they can be trained.
    """
    from ..instructbooth.checkpoint import components_from_ldm

    comfy.model_management.load_models_gpu([model, clip.load_model()], force_patch_weights=True, force_full_load=True)
    state = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd())
    with torch.inference_mode(False):
        state = {key: value.detach().to("cpu", torch.float32).clone() for key, value in state.items()}
    free_comfy_memory()
    return components_from_ldm(state)


def free_comfy_memory() -> None:
    """ComfyUI does not track models we build ourselves: make room before training."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


def training_device() -> torch.device:
    return comfy.model_management.get_torch_device()


def apply_lora_to_comfy(model, clip, lora_state: dict[str, torch.Tensor], strength_model: float, strength_clip: float):
    """MODEL and CLIP patched by ComfyUI's own LoRA loader, as the stock LoraLoader does."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    return comfy.sd.load_lora_for_models(model, clip, lora_state, strength_model, strength_clip)


def images_to_bchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] -> [B, 3, H, W] float32 in [0, 1], a trainable copy."""
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise NodeInputError(f"expected an IMAGE batch [B, H, W, 3], got shape {tuple(images.shape)}")
    with torch.inference_mode(False):
        return images[..., :3].permute(0, 3, 1, 2).to(torch.float32).clone()


def images_to_bhwc(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> ComfyUI IMAGE [B, H, W, 3] on the CPU."""
    return images.detach().permute(0, 2, 3, 1).to("cpu", torch.float32).contiguous()


class ComfyProgress:
    """Progress bar + cancel for a library training callback.

    The library calls this with a `training.StepReport` (`step`, `total`, optional
    `preview`: a PIL image or a tensor [3, H, W] in [0, 1]); ComfyUI's progress bar raises when
    the user presses cancel, which stops the trainer after its last checkpoint.
    """

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, info) -> bool:
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview = _preview_tuple(getattr(info, "preview", None))
        self.bar.update_absolute(int(info.step), int(info.total), preview)
        return True


def _preview_tuple(image):
    if image is None:
        return None
    from PIL import Image

    if isinstance(image, Image.Image):
        return ("JPEG", image.convert("RGB"), 512)
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    return ("JPEG", Image.fromarray(array), 512)


@contextlib.contextmanager
def training_mode():
    """ComfyUI runs nodes under torch.inference_mode(); training needs it off."""
    with torch.inference_mode(False), torch.enable_grad():
        yield
