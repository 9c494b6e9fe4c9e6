"""SD1.5 checkpoints: LDM <-> diffusers round trips, architecture inference, refusals.

Numerics use the tiny seeded components; the small SD1.5-shaped and full SD1.5
architectures are checked on the meta device (shapes only, no memory, no init time).
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from instructbooth.checkpoint import (
    ArchitectureHints,
    CheckpointError,
    components_from_ldm,
    detect_model_family,
    file_sha256,
    ldm_state_dict,
    load_checkpoint,
    pad_text_layers,
    read_state_dict,
    save_checkpoint,
    save_diffusers_folder,
)
from instructbooth.components import build_components, sd15_configs, small_sd15_configs, tiny_components, tiny_configs
from instructbooth.files import write_safetensors, write_text, write_torch

UNET = "model.diffusion_model."
TEXT = "cond_stage_model.transformer.text_model."

UNET_FIELDS = (
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "cross_attention_dim", "attention_head_dim", "norm_num_groups",
    "use_linear_projection", "transformer_layers_per_block", "sample_size",
)  # fmt: skip
VAE_FIELDS = (
    "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
    "down_block_types", "up_block_types", "norm_num_groups", "scaling_factor", "sample_size",
)  # fmt: skip
TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps",
)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two threads crawl on a busy shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    """Tiny seeded components shared by this module's tests (none of them changes it)."""
    return tiny_components(seed=0)


# ---------------------------------------------------------------------------- helpers


def assert_same_weights(expected, got) -> None:
    for a, b in zip(expected.modules(), got.modules(), strict=True):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        different = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not different, f"{type(a).__name__}: {different[:3]}"


def outputs(parts) -> dict[str, torch.Tensor]:
    """UNet, VAE encode/decode and text encoder outputs on fixed inputs."""
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 8, 8, generator=generator)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    ids = parts.tokenizer("sks plushie", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = parts.text_encoder(ids).last_hidden_state
        return {
            "text": text,
            "unet": parts.unet(latent, torch.tensor([321]), text).sample,
            "decode": parts.vae.decode(latent[:, :, :4, :4]).sample,
            "encode": parts.vae.encode(image).latent_dist.mean,
        }


def assert_same_outputs(expected, got) -> None:
    a, b = outputs(expected), outputs(got)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def meta_components(configs):
    """Components of an architecture on the meta device: shapes without memory or init."""
    with torch.device("meta"):
        return build_components(*configs)


def assert_config_fields(config, expected, fields) -> None:
    for field in fields:
        assert config[field] == expected[field], field


def tiny_ldm(tiny):
    return ldm_state_dict(tiny), ArchitectureHints.from_components(tiny)


# ---------------------------------------------------------------------------- round trips


def test_tiny_round_trip_in_memory_is_exact(tiny):
    state, hints = tiny_ldm(tiny)
    assert detect_model_family(state) == "sd15"
    loaded = components_from_ldm(state, hints=hints)
    assert_same_weights(tiny, loaded)
    assert_same_outputs(tiny, loaded)
    assert ldm_state_dict(loaded).keys() == state.keys()


def test_copy_keeps_loaded_models_independent_of_the_dict(tiny):
    state, hints = tiny_ldm(tiny)
    loaded = components_from_ldm(state, hints=hints)
    with torch.no_grad():
        loaded.unet.conv_in.weight.add_(1.0)
    assert torch.equal(state[UNET + "input_blocks.0.0.weight"], tiny.unet.conv_in.weight)


def test_safetensors_file_round_trip_restores_hints_from_metadata(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "tiny.safetensors")
    loaded = load_checkpoint(path)  # no hints: the file's metadata carries them
    assert_same_weights(tiny, loaded)
    assert_same_outputs(tiny, loaded)
    assert loaded.unet.config.sample_size == 8 and loaded.vae.config.sample_size == 32


def test_ckpt_file_with_state_dict_wrapper_loads(tiny, tmp_path):
    state, hints = tiny_ldm(tiny)
    path = write_torch(tmp_path / "tiny.ckpt", {"state_dict": state, "global_step": 10})
    loaded = load_checkpoint(path, hints=hints)
    assert_same_weights(tiny, loaded)


def test_diffusers_folder_loads_equal(tiny, tmp_path):
    tiny.unet.save_pretrained(tmp_path / "unet")
    tiny.vae.save_pretrained(tmp_path / "vae")
    tiny.text_encoder.save_pretrained(tmp_path / "text_encoder")
    loaded = load_checkpoint(tmp_path)
    assert_same_weights(tiny, loaded)
    assert_same_outputs(tiny, loaded)


def test_saved_diffusers_folder_round_trips(tiny, tmp_path):
    folder = save_diffusers_folder(tiny, tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["tokenizer"][0] == "transformers"
    assert (folder / "tokenizer" / "vocab.json").is_file() and not (tmp_path / "pipe.partial").exists()
    loaded = load_checkpoint(folder)
    assert_same_weights(tiny, loaded)
    assert_same_outputs(tiny, loaded)
    with pytest.raises(FileExistsError, match="exists"):
        save_diffusers_folder(tiny, folder)


def test_half_precision_file_and_dtype_argument(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "half.safetensors", dtype=torch.float16)
    state, _ = read_state_dict(path)
    assert {t.dtype for t in state.values()} == {torch.float16}
    loaded = load_checkpoint(path, dtype=torch.bfloat16)
    assert {p.dtype for m in loaded.modules() for p in m.parameters()} == {torch.bfloat16}


def test_padded_text_layers_are_exact_identities(tiny):
    state, hints = tiny_ldm(tiny)
    padded = components_from_ldm(pad_text_layers(state, 5), hints=hints)
    assert padded.text_encoder.config.num_hidden_layers == 5
    ids = tiny.tokenizer("sks plushie", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(tiny.text_encoder(ids).last_hidden_state, padded.text_encoder(ids).last_hidden_state)
    with pytest.raises(CheckpointError, match="cannot pad"):
        pad_text_layers(state, 1)


# ---------------------------------------------------------------------------- other layouts


def test_comfyui_and_legacy_text_prefixes_load_equal(tiny):
    state, hints = tiny_ldm(tiny)
    for alias in ("clip_l.transformer.text_model.", "cond_stage_model.transformer."):
        renamed = {(alias + k[len(TEXT):] if k.startswith(TEXT) else k): v for k, v in state.items()}
        renamed["clip_l.logit_scale"] = torch.tensor(4.6)
        assert_same_weights(tiny, components_from_ldm(renamed, hints=hints))


def test_extras_of_real_checkpoints_are_ignored(tiny):
    state, hints = tiny_ldm(tiny)
    state[TEXT + "embeddings.position_ids"] = torch.arange(77, dtype=torch.float32)[None]
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)
    state["model_ema.decay"] = torch.tensor(0.9999)
    assert_same_weights(tiny, components_from_ldm(state, hints=hints))


def test_v_prediction_marker_sets_the_scheduler(tiny):
    state, hints = tiny_ldm(tiny)
    state["v_pred"] = torch.tensor([])
    loaded = components_from_ldm(state, hints=hints)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert "v_pred" in ldm_state_dict(loaded)


def test_linear_shaped_vae_attention_loads(tiny):
    """Some converters store the VAE's 1x1-conv attention weights as 2-D linear weights."""
    state, hints = tiny_ldm(tiny)
    attention = [k for k in state if ".mid.attn_1." in k and k.endswith("weight") and state[k].ndim == 4]
    assert len(attention) == 8  # q, k, v, proj_out in encoder and decoder
    for key in attention:
        state[key] = state[key].flatten(1)
    assert_same_weights(tiny, components_from_ldm(state, hints=hints))


# ---------------------------------------------------------------------------- inferred architecture


def inpainting(configs):
    unet, vae, text = configs
    return {**unet, "in_channels": 9}, vae, text


ARCHITECTURES = {
    "tiny": tiny_configs,
    "small_sd15": small_sd15_configs,
    "sd15": sd15_configs,
    "tiny_inpainting": lambda: inpainting(tiny_configs()),
    "sd15_inpainting": lambda: inpainting(sd15_configs()),
}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_inferred_architecture_equals_the_original(name):
    configs = ARCHITECTURES[name]()
    original = meta_components(configs)
    loaded = components_from_ldm(ldm_state_dict(original), hints=ArchitectureHints.from_components(original), device="meta")
    assert_config_fields(loaded.unet.config, original.unet.config, UNET_FIELDS)
    assert_config_fields(loaded.vae.config, original.vae.config, VAE_FIELDS)
    assert_config_fields(loaded.text_encoder.config.to_dict(), original.text_encoder.config.to_dict(), TEXT_FIELDS)
    for a, b in zip(original.modules(), loaded.modules()):
        assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_full_sd15_key_names_match_the_original_checkpoint_layout():
    state = ldm_state_dict(meta_components(sd15_configs()))
    groups = [sum(k.startswith(p) for k in state) for p in (UNET, "first_stage_model.", TEXT)]
    assert groups == [686, 248, 196]  # v1-5-pruned-emaonly: 1131 tensors with position_ids
    for name in (
        UNET + "input_blocks.3.0.op.weight",
        UNET + "output_blocks.2.1.conv.weight",
        UNET + "output_blocks.5.2.conv.weight",
        UNET + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
        UNET + "middle_block.2.emb_layers.1.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.decoder.mid.attn_1.proj_out.weight",
        TEXT + "encoder.layers.11.mlp.fc2.weight",
    ):
        assert name in state, name
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert state[UNET + "input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)


@pytest.mark.parametrize("name", ["tiny", "sd15"])
def test_key_mapping_agrees_with_diffusers_own_converter(name, tiny):
    """An independent oracle: diffusers' single-file converters, given our configs (offline)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    parts = tiny if name == "tiny" else meta_components(sd15_configs())
    state = ldm_state_dict(parts)
    for convert, module in ((convert_ldm_unet_checkpoint, parts.unet), (convert_ldm_vae_checkpoint, parts.vae)):
        theirs, ours = convert(dict(state), dict(module.config)), module.state_dict()
        assert theirs.keys() == ours.keys()
        for key, tensor in ours.items():
            assert theirs[key].numel() == tensor.numel(), key
            if not tensor.is_meta:
                assert torch.equal(theirs[key].reshape(tensor.shape), tensor), key


def test_sd15_defaults_apply_without_hints():
    original = meta_components(small_sd15_configs())
    loaded = components_from_ldm(ldm_state_dict(original), device="meta")
    assert loaded.unet.config.attention_head_dim == 8
    assert loaded.text_encoder.config.num_attention_heads == 12


def test_tiny_without_hints_asks_for_them(tiny):
    state = ldm_state_dict(tiny)
    with pytest.raises(CheckpointError, match=r"pass ArchitectureHints\(vae_norm_groups=...\)"):
        components_from_ldm(state)
    with pytest.raises(CheckpointError, match=r"pass ArchitectureHints\(text_attention_heads=...\)"):
        components_from_ldm(state, hints=ArchitectureHints(vae_norm_groups=8))


# ---------------------------------------------------------------------------- refusals


def fake(entries: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(shape) for k, shape in entries.items()}


FOREIGN = {
    "sdxl_conditioner": ("sdxl", {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
                                  UNET + "input_blocks.0.0.weight": (320, 4, 3, 3)}),
    "sdxl_label_emb": ("sdxl", {UNET + "label_emb.0.0.weight": (1280, 2816), UNET + "input_blocks.0.0.weight": (320, 4, 3, 3)}),
    "sdxl_context": ("sdxl", {UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048)}),
    "sd2_openclip": ("sd2", {"cond_stage_model.model.ln_final.weight": (1024,), UNET + "input_blocks.0.0.weight": (320, 4, 3, 3)}),
    "sd2_context": ("sd2", {UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
                            UNET + "input_blocks.1.1.proj_in.weight": (320, 320)}),
    "lora_kohya": ("lora", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
                            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}),
    "lora_peft": ("lora", {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 320)}),
    "vae_bare": ("vae", {"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_out.weight": (3, 128, 3, 3),
                         "quant_conv.weight": (8, 8, 1, 1)}),
    "vae_prefixed": ("vae", {"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}),
    "diffusers_unet": ("diffusers", {"conv_in.weight": (320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (320, 320, 3, 3)}),
    "unknown": ("unknown", {"double_blocks.0.img_attn.qkv.weight": (9, 3)}),
}  # fmt: skip
ADVICE_WORDS = {"sdxl": "SDXL", "sd2": "2.x", "lora": "LoRA", "vae": "standalone VAE", "diffusers": "diffusers folder",
                "unknown": "not a Stable Diffusion 1.5"}  # fmt: skip


@pytest.mark.parametrize("name", FOREIGN)
def test_foreign_state_dicts_are_named_and_refused(name, tmp_path):
    family, entries = FOREIGN[name]
    state = fake(entries)
    assert detect_model_family(state) == family
    with pytest.raises(CheckpointError, match=ADVICE_WORDS[family]):
        components_from_ldm(state)
    path = write_safetensors(tmp_path / f"{name}.safetensors", state)
    with pytest.raises(CheckpointError, match=ADVICE_WORDS[family]):
        load_checkpoint(path)


def test_missing_key_is_listed(tiny):
    state, hints = tiny_ldm(tiny)
    del state[UNET + "output_blocks.1.0.emb_layers.1.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing keys \(model\.diffusion_model\.output_blocks\.1\.0\.emb_layers"):
        components_from_ldm(state, hints=hints)


def test_unexpected_keys_are_listed(tiny):
    state, hints = tiny_ldm(tiny)
    state[UNET + "output_blocks.1.0.extra.weight"] = torch.zeros(3)
    state["cond_stage_model.transformer.text_model.encoder.layers.0.adapter.weight"] = torch.zeros(3)
    state["some_other_model.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="3 unexpected keys") as caught:
        components_from_ldm(state, hints=hints)
    assert "some_other_model.weight" in str(caught.value) and "extra.weight" in str(caught.value)


def test_wrong_shape_is_named(tiny):
    state, hints = tiny_ldm(tiny)
    state[UNET + "out.0.weight"] = torch.zeros(31)
    with pytest.raises(CheckpointError, match=r"out\.0\.weight has shape \(31,\)"):
        components_from_ldm(state, hints=hints)


def test_missing_vae_is_named(tiny):
    state, hints = tiny_ldm(tiny)
    state = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(CheckpointError, match="no VAE"):
        components_from_ldm(state, hints=hints)


class Wrapped(torch.nn.Module):
    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x)


def test_components_with_wrapped_layers_are_refused():
    parts = tiny_components(seed=0)
    attention = parts.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    attention.to_q = Wrapped(attention.to_q)
    with pytest.raises(CheckpointError, match="Wrapped.*merge or remove it"):
        ldm_state_dict(parts)


# ---------------------------------------------------------------------------- damaged files


@pytest.fixture
def tiny_file(tiny, tmp_path):
    return save_checkpoint(tiny, tmp_path / "tiny.safetensors")


def test_truncated_safetensors_is_named(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)
    header_only = tmp_path / "header_cut.safetensors"
    header_only.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match="truncated or another kind of file"):
        load_checkpoint(header_only)


def test_text_file_named_safetensors_is_named(tmp_path):
    path = write_text(tmp_path / "model.safetensors", "<html>404 Not Found</html>\n" * 3)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)


def test_small_header_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes((4).to_bytes(8, "little") + b"\xff\xfe{[" + b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(path)


def test_pickle_named_safetensors_is_named(tiny, tmp_path):
    path = write_torch(tmp_path / "model.safetensors", {"a": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="rename it to .ckpt"):
        load_checkpoint(path)


def test_empty_and_absent_files_are_named(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.touch()
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.ckpt")
    with pytest.raises(CheckpointError, match="unknown checkpoint type"):
        load_checkpoint(write_text(tmp_path / "model.gguf", "x"))
    with pytest.raises(CheckpointError, match="unet/config.json is missing"):
        load_checkpoint(tmp_path)


def test_ckpt_with_python_objects_is_refused(tmp_path):
    path = write_torch(tmp_path / "evil.ckpt", {"state_dict": {}, "callback": hashlib.sha256})
    with pytest.raises(CheckpointError, match="Python objects"):
        load_checkpoint(path)


def test_damaged_ckpt_is_named(tiny, tmp_path):
    good = write_torch(tmp_path / "good.ckpt", {"w": torch.zeros(1000)})
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(bad)


# ---------------------------------------------------------------------------- hashing


def test_file_sha256_streams_and_shortens(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    seen = []
    assert file_sha256(path, chunk_bytes=4096, progress=seen.append) == expected
    assert sum(seen) == len(data) and len(seen) > 1
    assert file_sha256(path, short=True) == expected[:10]
