"""Load and save Stable Diffusion 1.5 checkpoints offline, as `SDComponents`.

Three sources give the same components:
- a single-file LDM checkpoint (`.safetensors`; `.ckpt`/`.pt` only as plain tensors),
- an LDM-format state dict in memory (what ComfyUI's MODEL/CLIP/VAE hold), and
- a diffusers folder (unet/, vae/, text_encoder/ with config.json and weights).

The architecture is read from key names and shapes (`checkpoint.architecture`), the names are
translated by `checkpoint.keys`, and loading is strict: a missing, unexpected or misshapen
tensor is an error that names a few of them. `ldm_state_dict` / `save_checkpoint` are
the exact inverse, which the tests use to build small SD1.5-shaped checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
from diffusers import DDPMScheduler
from transformers import CLIPTextConfig, CLIPTextModel

from .files import file_sha256, read_state_dict
from ..components import CONFIG_PACKAGE, SDComponents, build_text_encoder, build_unet, build_vae, load_tokenizer, make_noise_scheduler
from ..files import write_safetensors
from .architecture import (
    FAMILY_ADVICE,
    ArchitectureHints,
    CheckpointError,
    detect_model_family,
    infer_text_config,
    infer_unet_config,
    infer_vae_config,
    require_sd15,
)
from .keys import TEXT_PREFIX, UNET_PREFIX, VAE_CONV_LINEAR, VAE_PREFIX, text_key_map, unet_key_map, vae_key_map

__all__ = [
    "ArchitectureHints",
    "CheckpointError",
    "components_from_ldm",
    "detect_model_family",
    "file_sha256",
    "ldm_state_dict",
    "load_checkpoint",
    "load_diffusers_folder",
    "save_diffusers_folder",
    "pad_text_layers",
    "read_state_dict",
    "save_checkpoint",
]

# Other names the text encoder goes by: SD1.4-era files (no "text_model."), ComfyUI's CLIP.get_sd().
TEXT_ALIASES = ("cond_stage_model.transformer.", "clip_l.transformer.text_model.", "clip_l.transformer.")
# Tensors that carry no weights we need: DDPM schedule buffers, EMA copies, ComfyUI extras.
IGNORED_KEYS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "v_pred", "clip_l.logit_scale", "cond_stage_model.logit_scale",
    TEXT_PREFIX + "embeddings.position_ids",
    "cond_stage_model.transformer.text_projection.weight", "clip_l.transformer.text_projection.weight",
}  # fmt: skip
IGNORED_PREFIXES = ("model_ema.",)
V_PREDICTION_KEY = "v_pred"  # ComfyUI writes an empty tensor under this name for v-prediction models


def load_checkpoint(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hints: ArchitectureHints | None = None,
) -> SDComponents:
    """SD1.5 components from a single-file checkpoint or a diffusers folder, offline.

    `hints` override what the file's metadata says about settings no tensor shape shows.
    """
    path = Path(path)
    if path.is_dir():
        return load_diffusers_folder(path, dtype=dtype, device=device)
    state_dict, metadata = read_state_dict(path)
    require_sd15(state_dict, str(path))
    hints = hints or ArchitectureHints.from_metadata(metadata)
    return components_from_ldm(state_dict, dtype=dtype, device=device, hints=hints)


# ---------------------------------------------------------------------------- LDM -> components


def components_from_ldm(
    state_dict: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hints: ArchitectureHints | None = None,
    copy: bool = True,
) -> SDComponents:
    """SD1.5 components from an LDM-format state dict (single file or ComfyUI in memory).

    The dict is not modified. With `copy=False` the models may share storage with it (less
    memory, but training would change the caller's tensors, e.g. ComfyUI's model). Copies are
    also freshly aligned: tensors of a memory-mapped safetensors file are not, and CPU kernels
    may then round differently in the last bit.
    """
    require_sd15(state_dict, "the state dict")
    unet_sd, vae_sd, text_sd, unexpected = split_ldm(state_dict)
    hints = hints or ArchitectureHints()
    if V_PREDICTION_KEY in state_dict:
        hints = dataclasses.replace(hints, prediction_type="v_prediction")
    if not vae_sd:
        raise CheckpointError(f"the checkpoint has no VAE ({VAE_PREFIX}* keys); SD1.5 components need one")
    if not text_sd:
        raise CheckpointError(f"the checkpoint has no text encoder ({TEXT_PREFIX}* keys); SD1.5 components need one")
    with torch.device("meta"):
        unet = build_unet(infer_unet_config(_strip(unet_sd, UNET_PREFIX), hints))
        vae = build_vae(infer_vae_config(_strip(vae_sd, VAE_PREFIX), hints))
        text_encoder = build_text_encoder(infer_text_config(_strip(text_sd, TEXT_PREFIX), hints))
    maps = [(unet, _unet_map(unet), unet_sd), (vae, _vae_map(vae), vae_sd), (text_encoder, _text_map(text_encoder), text_sd)]
    _check_keys(maps, unexpected)
    for module, key_map, weights in maps:
        _assign(module, key_map, weights, dtype, device, copy)
    _restore_position_ids(text_encoder, device)
    parts = SDComponents(unet, vae, text_encoder, load_tokenizer(), _scheduler(hints.prediction_type))
    for module in parts.modules():
        _require_materialized(module, device)
        module.eval()
    return parts


def split_ldm(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict, list[str]]:
    """(unet, vae, text encoder, unexpected keys); text keys renamed to TEXT_PREFIX."""
    unet, vae, text, unexpected = {}, {}, {}, []
    for key, tensor in state_dict.items():
        name = _canonical_text_name(key)
        if name in IGNORED_KEYS or name.startswith(IGNORED_PREFIXES):
            continue
        if name.startswith(UNET_PREFIX):
            unet[name] = tensor
        elif name.startswith(VAE_PREFIX):
            vae[name] = tensor
        elif name.startswith(TEXT_PREFIX):
            text[name] = tensor
        else:
            unexpected.append(key)
    return unet, vae, text, unexpected


def _canonical_text_name(key: str) -> str:
    if key.startswith(TEXT_PREFIX) or key in IGNORED_KEYS:
        return key
    for alias in TEXT_ALIASES:
        if key.startswith(alias):
            return TEXT_PREFIX + key[len(alias):]
    return key


def _strip(weights: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in weights.items()}


def _unet_map(unet) -> dict[str, str]:
    up_attention = ["CrossAttn" in kind for kind in unet.config.up_block_types]
    return unet_key_map(unet.state_dict().keys(), unet.config.layers_per_block, up_attention)


def _vae_map(vae) -> dict[str, str]:
    return vae_key_map(vae.state_dict().keys(), len(vae.config.block_out_channels))


def _text_map(text_encoder) -> dict[str, str]:
    return text_key_map(text_encoder.state_dict().keys())


def _check_keys(maps: list[tuple[Any, dict[str, str], dict]], unexpected: list[str]) -> None:
    """Strict: every expected LDM key present, nothing left over, or one error naming them."""
    missing = []
    for _, key_map, weights in maps:
        expected = set(key_map.values())
        missing += sorted(expected - weights.keys())
        unexpected += sorted(weights.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            "the checkpoint does not match the SD1.5 architecture its shapes imply: "
            + "; ".join(_listing(what, keys) for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        )


def _listing(what: str, keys: list[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {what} keys ({', '.join(keys[:shown])}{more})"


def _assign(module, key_map, weights, dtype, device, copy) -> None:
    """Loads LDM `weights` into a meta-device `module` by name, adapting 1x1-conv/linear shapes."""
    targets = module.state_dict()
    loaded = {}
    for name, ldm_name in key_map.items():
        tensor = _fit_shape(weights[ldm_name], tuple(targets[name].shape), ldm_name)
        loaded[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None, copy=copy)
    module.load_state_dict(loaded, strict=True, assign=True)


def _fit_shape(tensor: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """`tensor` viewed as `shape` when they differ only by trailing 1x1 dims (conv vs linear)."""
    if tuple(tensor.shape) == shape:
        return tensor
    if tensor.shape[:2] == shape[:2] and tensor.numel() == torch.Size(shape).numel():
        return tensor.reshape(shape)
    raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}; the inferred architecture needs {shape}")


def _restore_position_ids(text_encoder: torch.nn.Module, device: torch.device | str) -> None:
    """CLIP's position_ids buffer (0..n-1, not saved in state dicts) was built on the meta device."""
    for module in text_encoder.modules():
        ids = module._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            module._buffers["position_ids"] = torch.arange(ids.shape[-1], device=device).expand(ids.shape).clone()


def _require_materialized(module: torch.nn.Module, device: torch.device | str) -> None:
    """Every tensor loaded; `device="meta"` builds the architecture without weights, on purpose."""
    if torch.device(device).type == "meta":
        return
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise CheckpointError(f"{type(module).__name__}.{name} was not loaded (still on the meta device)")


def _scheduler(prediction_type: str) -> DDPMScheduler:
    scheduler = make_noise_scheduler()
    if prediction_type != scheduler.config.prediction_type:
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    return scheduler


# ---------------------------------------------------------------------------- components -> LDM


def ldm_state_dict(parts: SDComponents) -> dict[str, torch.Tensor]:
    """The components as one LDM-format state dict (exact inverse of `components_from_ldm`)."""
    if parts.vae is None:
        raise CheckpointError("components without a VAE (pixel-space) have no SD1.5 checkpoint form")
    for module in parts.modules():
        _require_stock_modules(module)
    state: dict[str, torch.Tensor] = {}
    for module, key_map in ((parts.unet, _unet_map(parts.unet)), (parts.vae, _vae_map(parts.vae)),
                            (parts.text_encoder, _text_map(parts.text_encoder))):  # fmt: skip
        for name, tensor in module.state_dict().items():
            ldm_name = key_map[name]
            if VAE_CONV_LINEAR.search(ldm_name) and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
            state[ldm_name] = tensor.detach()
    if parts.scheduler.config.prediction_type == "v_prediction":
        state[V_PREDICTION_KEY] = torch.tensor([])
    return state


STOCK_LIBRARIES = ("torch", "diffusers", "transformers")


def _require_stock_modules(module: torch.nn.Module) -> None:
    """Refuses wrapped layers (an injected LoRA): their parameter names have no LDM form."""
    for name, child in module.named_modules():
        if type(child).__module__.split(".")[0] not in STOCK_LIBRARIES:
            raise CheckpointError(
                f"{type(module).__name__}.{name} is a {type(child).__name__} from {type(child).__module__} "
                "(an injected LoRA?); merge or remove it before making a checkpoint"
            )


def save_checkpoint(
    parts: SDComponents,
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    pad_text_layers_to: int | None = None,
) -> Path:
    """Writes the components as one LDM-format .safetensors file (atomically).

    The architecture hints go in the metadata so `load_checkpoint` rebuilds reduced models
    exactly; `dtype` (e.g. torch.float16) casts floating tensors for a smaller file;
    `pad_text_layers_to=12` makes a reduced text encoder loadable by stock ComfyUI (see
    `pad_text_layers`).
    """
    state = ldm_state_dict(parts)
    if pad_text_layers_to is not None:
        state = pad_text_layers(state, pad_text_layers_to)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    header = {**ArchitectureHints.from_components(parts).to_metadata(), **dict(metadata or {})}
    return write_safetensors(path, state, metadata=header)


def pad_text_layers(state_dict: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A copy of an LDM state dict whose text encoder has `layers` layers, the added ones exact
    identities (all weights zero except LayerNorm scales: each residual branch adds 0.0).

    ComfyUI builds the SD1 CLIP from a fixed 12-layer config and leaves layers missing from
    the file uninitialised (non-finite conditioning); padding a reduced test checkpoint to 12
    keeps its outputs bit-for-bit and makes it work in stock ComfyUI workflows.
    """
    prefix = TEXT_PREFIX + "encoder.layers."
    count = len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})
    if count == 0 or layers < count:
        raise CheckpointError(f"cannot pad a {count}-layer text encoder to {layers} layers")
    padded = dict(state_dict)
    template = {k[len(prefix) + 2:]: v for k, v in state_dict.items() if k.startswith(prefix + "0.")}
    for index in range(count, layers):
        for name, tensor in template.items():
            is_scale = name.startswith("layer_norm") and name.endswith("weight")
            padded[f"{prefix}{index}.{name}"] = torch.ones_like(tensor) if is_scale else torch.zeros_like(tensor)
    return padded


# ---------------------------------------------------------------------------- diffusers folders

# Weight files tried in order for each part of a diffusers folder.
WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin"),
}


def load_diffusers_folder(
    folder: str | os.PathLike, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> SDComponents:
    """SD1.5 components from a diffusers folder (unet/, vae/, text_encoder/), strictly.

    Configs come from the folder's config.json files; the tokenizer is the packaged SD1.5 one.
    """
    folder = Path(folder)
    configs = {part: _part_config(folder, part) for part in WEIGHT_FILES}
    _refuse_other_diffusers(folder, configs["unet"])
    with torch.device("meta"):
        unet = build_unet(configs["unet"])
        vae = build_vae(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
    for part, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        weights = _part_weights(folder / part, WEIGHT_FILES[part])
        identity = {name: name for name in module.state_dict()}
        _check_keys([(module, identity, weights)], [])
        _assign(module, identity, weights, dtype, device, copy=True)
    _restore_position_ids(text_encoder, device)
    prediction = _part_json(folder / "scheduler" / "scheduler_config.json").get("prediction_type", "epsilon")
    parts = SDComponents(unet, vae, text_encoder, load_tokenizer(), _scheduler(prediction))
    for module in parts.modules():
        _require_materialized(module, device)
        module.eval()
    return parts


def save_diffusers_folder(components: SDComponents, folder: str | os.PathLike) -> Path:
    """The components as a diffusers StableDiffusionPipeline folder, the inverse of
    `load_diffusers_folder` (also readable by diffusers' `from_pretrained` and its training
    scripts). Written beside `folder` and moved into place; an existing folder is refused."""
    import shutil

    import diffusers

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder or remove it")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for part in ("unet", "vae", "text_encoder", "scheduler"):
        getattr(components, part).save_pretrained(partial / part)
    (partial / "tokenizer").mkdir()
    for shipped in (resources.files(CONFIG_PACKAGE) / "tokenizer").iterdir():  # SD1.5's original files
        (partial / "tokenizer" / shipped.name).write_bytes(shipped.read_bytes())
    library = {"unet": "diffusers", "vae": "diffusers", "scheduler": "diffusers",
               "text_encoder": "transformers", "tokenizer": "transformers"}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             **{part: [lib, type(getattr(components, part)).__name__] for part, lib in library.items()}}
    (partial / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    os.replace(partial, folder)
    return folder


def _part_config(folder: Path, part: str) -> dict[str, Any]:
    path = folder / part / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a diffusers SD1.5 folder: {part}/config.json is missing")
    return _part_json(path)


def _part_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from error


def _refuse_other_diffusers(folder: Path, unet_config: Mapping[str, Any]) -> None:
    context = unet_config.get("cross_attention_dim")
    if (folder / "text_encoder_2").is_dir() or unet_config.get("addition_embed_type") or context == 2048:
        raise CheckpointError(f"{folder} looks like {FAMILY_ADVICE['sdxl']}")
    if context == 1024:
        raise CheckpointError(f"{folder} looks like {FAMILY_ADVICE['sd2']}")


def _part_weights(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A part's weights by diffusers/transformers name (`text_model.` prefix dropped)."""
    for name in names:
        if (folder / name).is_file():
            weights, _ = read_state_dict(folder / name)
            return {k.removeprefix("text_model."): v for k, v in weights.items() if not k.endswith("position_ids")}
    if any(folder.glob("*.index.json")):
        raise CheckpointError(f"{folder} holds sharded weights; re-save them unsharded (save_pretrained max_shard_size)")
    raise CheckpointError(f"{folder} has none of the weight files {', '.join(names)}")
