"""Our SD1.5 checkpoints against a real ComfyUI (v0.8+ at $COMFYUI_PATH, CPU mode).

A small SD1.5-shaped checkpoint made here (one 320-channel UNet level, 1-layer CLIP padded
with identity layers to ComfyUI's fixed 12, full-size VAE) is loaded by ComfyUI's own
`load_checkpoint_guess_config`; for the same inputs its UNet, text encoder and VAE must
give what ours give, a 9-channel (inpainting) variant too, and the state dict ComfyUI
saves back (`state_dict_for_saving`) must load strictly into equal components.

Run: COMFYUI_PATH=/work/comfyui pytest tests/test_comfyui_checkpoint.py
"""

from __future__ import annotations

import pytest
import torch

from comfyui_env import run_in_comfyui, skip_reason
from instructbooth.checkpoint import ldm_state_dict, load_checkpoint, save_checkpoint
from instructbooth.components import small_sd15_components
from instructbooth.files import write_safetensors

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

PROMPT = "a photo of sks plushie playing basketball"
TOLERANCE = 1e-4  # float32 on CPU; both sides run the same maths in a different order

COMFY_SNIPPET = """
import comfy.sd

path = str(WORKDIR / "small_sd15.safetensors")
# ComfyUI stores text-encoder weights in float16 by default (computing in float32), which
# moves its outputs by ~2e-3 here; ask for float32 to compare the weights' meaning exactly.
text_options = {"dtype": torch.float32}
model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, te_model_options=text_options)
unet = model.model.diffusion_model
RESULT["config"] = type(model.model.model_config).__name__
RESULT["model_type"] = model.model.model_type.name
modules = {"unet": unet, "clip": clip.cond_stage_model, "vae": vae.first_stage_model}
RESULT["dtypes"] = {name: sorted({str(p.dtype) for p in m.parameters()}) for name, m in modules.items()}

tokens = clip.tokenize(PROMPT)
RESULT["tokens"] = [token for token, weight in tokens["l"][0]]
with torch.no_grad():
    TENSORS["text"] = clip.encode_from_tokens(tokens)
    TENSORS["eps"] = unet(INPUTS["latent"], timesteps=INPUTS["timestep"], context=INPUTS["context"])
    TENSORS["decoded"] = vae.first_stage_model.decode(INPUTS["latent"])
    TENSORS["encoded"] = vae.first_stage_model.encode(INPUTS["image"])

inpaint, _, _, _ = comfy.sd.load_checkpoint_guess_config(
    str(WORKDIR / "inpaint.safetensors"), output_vae=False, output_clip=False, te_model_options=text_options
)
RESULT["inpaint_config"] = type(inpaint.model.model_config).__name__
RESULT["inpaint_in_channels"] = inpaint.model.model_config.unet_config["in_channels"]
with torch.no_grad():
    TENSORS["inpaint_eps"] = inpaint.model.diffusion_model(
        INPUTS["inpaint_latent"], timesteps=INPUTS["timestep"], context=INPUTS["context"]
    )

saved = model.model.state_dict_for_saving(clip.get_sd(), vae.get_sd())
save_file({k: v.contiguous() for k, v in saved.items()}, str(WORKDIR / "resaved.safetensors"))
"""


@pytest.fixture(scope="module")
def small():
    return small_sd15_components(seed=0)


@pytest.fixture(scope="module")
def comfy(small, tmp_path_factory):
    """ComfyUI's view of our small checkpoint: detection, outputs and its re-saved file."""
    workdir = tmp_path_factory.mktemp("comfyui")
    # ComfyUI's SD1 CLIP always has 12 layers: pad ours with identity layers (outputs unchanged).
    save_checkpoint(small, workdir / "small_sd15.safetensors", pad_text_layers_to=12)
    generator = torch.Generator().manual_seed(0)
    _save_inpainting_variant(small, workdir / "inpaint.safetensors", generator)
    inputs = {
        "latent": torch.randn(1, 4, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0]),
        "context": torch.randn(1, 77, 768, generator=generator),
        "image": torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1,
        "inpaint_latent": torch.randn(1, 9, 8, 8, generator=generator),
    }
    run = run_in_comfyui(f"PROMPT = {PROMPT!r}\n" + COMFY_SNIPPET, inputs=inputs, workdir=workdir)
    return run, inputs


def _save_inpainting_variant(parts, path, generator) -> None:
    """The same weights with a 9-channel conv_in (latent + mask + masked-image latent)."""
    state = ldm_state_dict(parts)
    conv_in = state["model.diffusion_model.input_blocks.0.0.weight"]
    extra = torch.randn(conv_in.shape[0], 5, *conv_in.shape[2:], generator=generator) * conv_in.std()
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.cat([conv_in, extra], dim=1)
    write_safetensors(path, state)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_comfyui_detects_sd15_eps_in_float32(comfy):
    run, _ = comfy
    assert run.values["config"] == "SD15"
    assert run.values["model_type"] == "EPS"
    assert run.values["dtypes"] == {name: ["torch.float32"] for name in ("unet", "clip", "vae")}
    assert "clip missing" not in run.log  # the padded text encoder fills ComfyUI's 12 layers


def test_text_encoder_matches_comfyui(small, comfy):
    run, _ = comfy
    ids = small.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids == run.values["tokens"]
    with torch.no_grad():
        ours = small.text_encoder(torch.tensor([ids])).last_hidden_state
    diff = _max_diff(ours, run.tensors["text"])
    print(f"text encoder max abs diff vs ComfyUI: {diff:.3g}")
    assert diff < TOLERANCE


def test_unet_matches_comfyui_raw_diffusion_model(small, comfy):
    run, inputs = comfy
    with torch.no_grad():
        ours = small.unet(inputs["latent"], inputs["timestep"], inputs["context"]).sample
    diff = _max_diff(ours, run.tensors["eps"])
    print(f"UNet max abs diff vs ComfyUI: {diff:.3g} (output scale {ours.abs().max():.3g})")
    assert diff < TOLERANCE


def test_inpainting_unet_loads_in_both_and_matches(comfy):
    run, inputs = comfy
    assert (run.values["inpaint_config"], run.values["inpaint_in_channels"]) == ("SD15", 9)
    ours = load_checkpoint(run.workdir / "inpaint.safetensors")
    assert ours.unet.config.in_channels == 9
    with torch.no_grad():
        eps = ours.unet(inputs["inpaint_latent"], inputs["timestep"], inputs["context"]).sample
    diff = _max_diff(eps, run.tensors["inpaint_eps"])
    print(f"9-channel UNet max abs diff vs ComfyUI: {diff:.3g}")
    assert diff < TOLERANCE


def test_vae_matches_comfyui(small, comfy):
    run, inputs = comfy
    with torch.no_grad():
        decoded = small.vae.decode(inputs["latent"]).sample
        encoded = small.vae.encode(inputs["image"]).latent_dist.mean
    decode_diff = _max_diff(decoded, run.tensors["decoded"])
    encode_diff = _max_diff(encoded, run.tensors["encoded"])
    print(f"VAE max abs diff vs ComfyUI: decode {decode_diff:.3g}, encode {encode_diff:.3g}")
    assert decode_diff < TOLERANCE
    assert encode_diff < TOLERANCE


def test_comfyui_resaved_checkpoint_loads_strictly_and_equal(comfy):
    run, _ = comfy
    original = load_checkpoint(run.workdir / "small_sd15.safetensors")
    loaded = load_checkpoint(run.workdir / "resaved.safetensors")  # SD1.5 defaults: small_sd15 needs no hints
    assert loaded.text_encoder.config.num_hidden_layers == 12
    for ours, theirs in zip(original.modules(), loaded.modules()):
        expected, got = ours.state_dict(), theirs.state_dict()
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected)
