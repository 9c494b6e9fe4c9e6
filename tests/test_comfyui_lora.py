"""Our LoRA files in a real ComfyUI: the stock loading path patches every module, and the
patched model computes what our `apply_lora` computes.

Needs COMFYUI_PATH (and ComfyUI's venv, see comfyui_env.py); skipped otherwise. Builds a
small SD1.5-shaped checkpoint at test time (about 150M parameters, ~10 s on CPU).
"""

from __future__ import annotations

import pytest
import torch

from instructbooth.components import small_sd15_components
from instructbooth.lora import (
    TEXT_ATTENTION_TARGETS,
    TEXT_MLP_TARGETS,
    UNET_ATTENTION_TARGETS,
    UNET_EXTRA_TARGETS,
    LoraConfig,
    LoraMetadata,
    apply_lora,
    inject_lora,
    lora_disabled,
    lora_parameters,
    lora_state_dict,
    remove_lora,
    save_lora,
)

comfyui_env = pytest.importorskip("comfyui_env", reason="tests/comfyui_env.py (runs code inside ComfyUI) is missing")
pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(comfyui_env.skip_reason() is not None, reason=comfyui_env.skip_reason() or ""),
]

CHECKPOINT, LORA = "sd15_small.safetensors", "sks_lora.safetensors"

# Loads the checkpoint and the LoRA the way the core CheckpointLoaderSimple and LoraLoader do,
# records which weights got patches and every warning, and runs the UNet and CLIP with and without.
COMFY_SNIPPET = """
import logging
warnings = []

class Remember(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())

logging.getLogger().addHandler(Remember(level=logging.WARNING))
comfy.cli_args.args.fp32_text_enc = True  # CPU default is fp16; fp32 makes the comparison tight
import comfy.model_management, comfy.sd, comfy.utils

model, clip = comfy.sd.load_checkpoint_guess_config(str(WORKDIR / "%(checkpoint)s"), output_vae=True, output_clip=True)[:2]
lora = comfy.utils.load_torch_file(str(WORKDIR / "%(lora)s"), safe_load=True)
model_lora, clip_lora = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
RESULT.update(model_type=type(model.model.model_config).__name__, unet_patched=sorted(model_lora.patches),
              clip_patched=sorted(clip_lora.patcher.patches), warnings=warnings)

def unet_output(patcher):
    comfy.model_management.load_models_gpu([patcher])
    with torch.no_grad():
        return patcher.model.diffusion_model(INPUTS["x"], timesteps=INPUTS["t"], context=INPUTS["context"]).float()

TENSORS["unet_base"], TENSORS["unet_lora"] = unet_output(model), unet_output(model_lora)
tokens = clip.tokenize("a photo of sks plushie")
TENSORS["ids"] = torch.tensor([[token[0] for token in tokens["l"][0]]])
TENSORS["text_base"] = clip.encode_from_tokens(tokens).float()
TENSORS["text_lora"] = clip_lora.encode_from_tokens(tokens).float()
""" % {"checkpoint": CHECKPOINT, "lora": LORA}


@pytest.fixture(scope="module")
def comfy_round(tmp_path_factory):
    """Our side (checkpoint, LoRA file, reference outputs) and what ComfyUI made of it."""
    from instructbooth import checkpoint

    folder = tmp_path_factory.mktemp("comfyui_lora")
    parts = small_sd15_components(seed=0)
    checkpoint.save_checkpoint(parts, folder / CHECKPOINT)
    config = LoraConfig(rank=4, alpha=2.0, unet_targets=UNET_ATTENTION_TARGETS + UNET_EXTRA_TARGETS,
                        text_targets=TEXT_ATTENTION_TARGETS + TEXT_MLP_TARGETS)
    inject_lora(parts, config, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for up in lora_parameters(parts)[1::2]:
            up.copy_(torch.randn(up.shape, generator=gen) * 0.02)
    state = lora_state_dict(parts)
    save_lora(folder / LORA, state, LoraMetadata(trigger_phrase="sks plushie", method="personalize", rank=4, alpha=2.0))
    inputs = {"x": torch.randn(1, 4, 16, 16, generator=gen), "context": torch.randn(1, 77, 768, generator=gen),
              "t": torch.tensor([500.0])}
    comfy = comfyui_env.run_in_comfyui(COMFY_SNIPPET, inputs, workdir=folder)
    ours = reference_outputs(parts, state, inputs, comfy.tensors["ids"])
    return state, comfy, ours


def reference_outputs(parts, state, inputs, ids) -> dict[str, torch.Tensor]:
    """UNet and text outputs of our injected model, its base, and the base with apply_lora."""
    def run():
        unet = parts.unet(inputs["x"], inputs["t"], encoder_hidden_states=inputs["context"]).sample
        return unet, parts.text_encoder(ids).last_hidden_state

    with torch.no_grad():
        injected = run()
        with lora_disabled(parts):
            base = run()
        remove_lora(parts)
        apply_lora(parts, state)
        applied = run()
    return {"unet_base": base[0], "text_base": base[1], "unet_injected": injected[0], "unet_lora": applied[0],
            "text_lora": applied[1]}


def modules_in(state, prefix: str) -> set[str]:
    return {key.split(".")[0] for key in state if key.startswith(prefix)}


def test_stock_loader_patches_every_module_of_our_file(comfy_round):
    state, comfy, _ = comfy_round
    values = comfy.values
    assert values["model_type"] == "SD15"
    unet_modules, text_modules = modules_in(state, "lora_unet_"), modules_in(state, "lora_te_")
    assert (len(unet_modules), len(text_modules)) == (4 * 12, 6)  # 4 transformer blocks x 12 layers; 1 CLIP layer x 6
    assert len(values["unet_patched"]) == len(unet_modules)
    assert len(values["clip_patched"]) == len(text_modules)
    assert all(key.startswith("diffusion_model.") for key in values["unet_patched"])
    assert all(".text_model.encoder.layers.0." in key for key in values["clip_patched"])
    not_loaded = [w for w in values["warnings"] if "lora key not loaded" in w or "NOT LOADED" in w]
    assert not_loaded == [], not_loaded[:5]


def test_comfyui_unet_with_our_lora_equals_our_apply_lora(comfy_round):
    _, comfy, ours = comfy_round
    theirs = comfy.tensors
    assert (theirs["unet_lora"] - theirs["unet_base"]).abs().max() > 1e-2  # the LoRA changes the output
    torch.testing.assert_close(theirs["unet_base"], ours["unet_base"], atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs["unet_lora"], ours["unet_lora"], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours["unet_injected"], ours["unet_lora"], atol=1e-5, rtol=0)


def test_comfyui_clip_with_our_lora_equals_our_apply_lora(comfy_round):
    _, comfy, ours = comfy_round
    theirs = comfy.tensors
    assert (theirs["text_lora"] - theirs["text_base"]).abs().max() > 1e-2
    torch.testing.assert_close(theirs["text_base"], ours["text_base"], atol=2e-5, rtol=0)
    torch.testing.assert_close(theirs["text_lora"], ours["text_lora"], atol=2e-5, rtol=0)
