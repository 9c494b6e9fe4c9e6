"""LoRA: injection, kohya names, files, merging and applying, on tiny seeded models (CPU)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from instructbooth import __version__
from instructbooth.components import tiny_components
from instructbooth.lora import (
    TEXT_ATTENTION_TARGETS,
    TEXT_MLP_TARGETS,
    UNET_EXTRA_TARGETS,
    LoraConfig,
    LoraError,
    LoraLinear,
    LoraMetadata,
    apply_lora,
    find_unknown_modules,
    inject_lora,
    load_lora,
    load_lora_state,
    lora_disabled,
    lora_merged,
    lora_parameters,
    lora_state_dict,
    merge_lora_states,
    read_lora_metadata,
    remove_lora,
    save_lora,
)

UNET_KEY = re.compile(
    r"^lora_unet_(down_blocks_\d+_attentions_\d+|up_blocks_\d+_attentions_\d+|mid_block_attentions_0)"
    r"_transformer_blocks_\d+_attn[12]_(to_q|to_k|to_v|to_out_0)\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
TEXT_KEY = re.compile(
    r"^lora_te_text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12])\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
TINY_TRANSFORMER_BLOCKS = 4  # tiny UNet: one attention block down, two up, one in the middle
TINY_TEXT_LAYERS = 2
ALL_TEXT = TEXT_ATTENTION_TARGETS + TEXT_MLP_TARGETS
RESNET_CONV = "up_blocks.1.resnets.0.conv1"  # a 3x3 convolution of the tiny UNet
PROJ_IN = "down_blocks.0.attentions.0.proj_in"  # a 1x1 convolution
PROJ_OUT = "up_blocks.1.attentions.0.proj_out"
FF = "mid_block.attentions.0.transformer_blocks.0.ff.net.2"
TEXT_FC1 = "encoder.layers.1.mlp.fc1"


def unet_output(parts) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    context = torch.randn(2, 5, 32, generator=gen)
    with torch.no_grad():
        return parts.unet(sample, torch.tensor([10, 500]), encoder_hidden_states=context).sample


def text_output(parts) -> torch.Tensor:
    ids = torch.tensor([[49406, 320, 1125, 539, 49407, 49407]])
    with torch.no_grad():
        return parts.text_encoder(ids).last_hidden_state


def outputs(parts) -> tuple[torch.Tensor, torch.Tensor]:
    return unet_output(parts), text_output(parts)


def randomize_up(parts, seed: int = 3, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in lora_parameters(parts)[1::2]:
            param.copy_(torch.randn(param.shape, generator=gen) * std)


def trained_state(seed: int, config: LoraConfig) -> dict[str, torch.Tensor]:
    """A LoRA state with random non-zero up weights, made on a throwaway model."""
    parts = tiny_components(seed=0)
    inject_lora(parts, config, seed=seed)
    randomize_up(parts, seed=seed + 100)
    return lora_state_dict(parts)


@pytest.fixture
def injected(tiny):
    """Tiny components with LoRA on the UNet attention and all text targets (rank 4, alpha 8)."""
    inject_lora(tiny, LoraConfig(rank=4, alpha=8.0, text_targets=ALL_TEXT), seed=0)
    return tiny


# ---------------------------------------------------------------- injection and key names


def test_injection_counts_and_kohya_names(tiny):
    params = inject_lora(tiny, LoraConfig(text_targets=TEXT_ATTENTION_TARGETS), seed=0)
    state = lora_state_dict(tiny)
    unet_modules = TINY_TRANSFORMER_BLOCKS * 2 * 4  # blocks x (attn1, attn2) x (q, k, v, out)
    text_modules = TINY_TEXT_LAYERS * 4
    assert len(params) == 2 * (unet_modules + text_modules)
    assert sum(bool(UNET_KEY.match(k)) for k in state) == 3 * unet_modules
    assert sum(bool(TEXT_KEY.match(k)) for k in state) == 3 * text_modules
    assert len(state) == 3 * (unet_modules + text_modules)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    assert float(state["lora_te_text_model_encoder_layers_1_self_attn_out_proj.alpha"]) == 4.0


def test_optional_targets_add_projections_ff_and_text_mlp(tiny):
    targets = LoraConfig().unet_targets + UNET_EXTRA_TARGETS
    inject_lora(tiny, LoraConfig(unet_targets=targets, text_targets=ALL_TEXT))
    names = {k.split(".")[0] for k in lora_state_dict(tiny)}
    assert len(names) == TINY_TRANSFORMER_BLOCKS * 12 + TINY_TEXT_LAYERS * 6
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj" in names
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in names
    assert lora_state_dict(tiny)["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 32, 1, 1)


def test_only_lora_is_trainable_and_seed_fixes_down(tiny):
    params = inject_lora(tiny, LoraConfig(text_targets=("q_proj",)), seed=7)
    trainable = [p for part in tiny.modules() for p in part.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    assert all(p.abs().sum() == 0 for p in params[1::2])  # up weights start at zero
    other = tiny_components(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(params, inject_lora(other, LoraConfig(text_targets=("q_proj",)), seed=7)))


def test_zero_up_weights_leave_outputs_unchanged(tiny):
    before = outputs(tiny)
    inject_lora(tiny, LoraConfig(unet_targets=LoraConfig().unet_targets + UNET_EXTRA_TARGETS, text_targets=ALL_TEXT))
    for old, new in zip(before, outputs(tiny)):
        assert torch.equal(old, new)


def test_injected_lora_equals_applied_lora(injected):
    base = tiny_components(seed=0)
    base_unet, base_text = outputs(base)
    randomize_up(injected)
    lora_unet, lora_text = outputs(injected)
    assert (lora_unet - base_unet).abs().max() > 1e-3
    assert (lora_text - base_text).abs().max() > 1e-3
    assert apply_lora(base, lora_state_dict(injected)) == TINY_TRANSFORMER_BLOCKS * 8 + TINY_TEXT_LAYERS * 6
    merged_unet, merged_text = outputs(base)
    torch.testing.assert_close(merged_unet, lora_unet, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged_text, lora_text, atol=1e-5, rtol=0)


def weights(parts) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.clone() for name in ("unet", "text_encoder")
            for k, v in getattr(parts, name).state_dict().items()}


def test_lora_merged_stacks_for_a_while_and_restores_exactly_also_nested_and_under_injection(tiny):
    personal = trained_state(1, LoraConfig(rank=4, alpha=8.0, text_targets=ALL_TEXT))
    second = trained_state(2, LoraConfig(rank=2, alpha=2.0))
    before = weights(tiny)
    base_unet, _ = outputs(tiny)
    with lora_merged(tiny, personal):
        merged_unet, _ = outputs(tiny)
        reference = tiny_components(seed=0)
        apply_lora(reference, personal)
        torch.testing.assert_close(merged_unet, outputs(reference)[0], atol=0, rtol=0)  # the same merge
        with lora_merged(tiny, second, scale=0.5):
            assert not torch.equal(outputs(tiny)[0], merged_unet)
        torch.testing.assert_close(outputs(tiny)[0], merged_unet, atol=0, rtol=0)
        inject_lora(tiny, LoraConfig(rank=2), seed=0)  # RL and DPO train a LoRA on top inside the block
        randomize_up(tiny)
    remove_lora(tiny)
    after = weights(tiny)
    assert all(torch.equal(after[k], before[k]) for k in before)  # bit for bit, not up to rounding
    assert (merged_unet - base_unet).abs().max() > 1e-3
    with lora_merged(tiny, None):  # nothing to stack
        pass
    with pytest.raises(LoraError, match="match no layer"):
        with lora_merged(tiny, {"lora_unet_nowhere.lora_down.weight": torch.zeros(1, 1),
                                "lora_unet_nowhere.lora_up.weight": torch.zeros(1, 1)}):
            pass
    assert all(torch.equal(v, before[k]) for k, v in weights(tiny).items())


def test_apply_scales_unet_and_text_separately(injected):
    randomize_up(injected)
    state = lora_state_dict(injected)
    base_unet, base_text = outputs(tiny_components(seed=0))
    text_only = tiny_components(seed=0)
    apply_lora(text_only, state, unet_scale=0.0, text_scale=1.0)
    unet_out, text_out = outputs(text_only)
    torch.testing.assert_close(unet_out, base_unet, atol=1e-6, rtol=0)
    assert (text_out - base_text).abs().max() > 1e-3


def test_convolution_lora_forward_equals_its_merged_weights(tiny):
    inject_lora(tiny, LoraConfig(rank=3, alpha=1.5, unet_targets=("conv1", "proj_in")), seed=0)
    randomize_up(tiny)
    state = lora_state_dict(tiny)
    assert state["lora_unet_up_blocks_1_resnets_0_conv1.lora_down.weight"].shape == (3, 96, 3, 3)
    assert state["lora_unet_up_blocks_1_resnets_0_conv1.lora_up.weight"].shape == (32, 3, 1, 1)
    merged = tiny_components(seed=0)
    apply_lora(merged, state)
    torch.testing.assert_close(unet_output(merged), unet_output(tiny), atol=1e-5, rtol=0)


def test_dropout_acts_only_in_training_mode():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(16, 8), rank=4, alpha=4.0, dropout=0.5)
    nn.init.normal_(layer.up.weight)
    x = torch.randn(64, 16)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


def test_lora_disabled_gives_base_outputs_exactly(injected):
    base = outputs(tiny_components(seed=0))
    randomize_up(injected)
    with_lora = outputs(injected)
    with lora_disabled(injected):
        for old, new in zip(base, outputs(injected)):
            assert torch.equal(old, new)
    for old, new in zip(with_lora, outputs(injected)):
        assert torch.equal(old, new)


def test_remove_lora_restores_module_tree(tiny):
    modules_before = {n: m for part in tiny.modules() for n, m in part.named_modules()}
    flags_before = [p.requires_grad for part in tiny.modules() for p in part.parameters()]
    base = outputs(tiny)
    inject_lora(tiny, LoraConfig(text_targets=ALL_TEXT), seed=0)
    randomize_up(tiny)
    remove_lora(tiny)
    modules_after = {n: m for part in tiny.modules() for n, m in part.named_modules()}
    assert modules_after.keys() == modules_before.keys()
    assert all(modules_after[n] is m for n, m in modules_before.items())
    assert [p.requires_grad for part in tiny.modules() for p in part.parameters()] == flags_before
    for old, new in zip(base, outputs(tiny)):
        assert torch.equal(old, new)
    inject_lora(tiny, LoraConfig())  # injecting again after removal is fine


def test_gradients_reach_lora_in_unet_and_text_encoder_also_with_checkpointing(injected):
    randomize_up(injected)
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    sample = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def loss_fn(use_checkpoint: bool) -> torch.Tensor:
        context = injected.text_encoder(ids).last_hidden_state

        def run_unet(x, c):
            return injected.unet(x, torch.tensor([10]), encoder_hidden_states=c).sample

        out = checkpoint(run_unet, sample, context, use_reentrant=False) if use_checkpoint else run_unet(sample, context)
        return out.square().mean()

    params = lora_parameters(injected)
    plain = torch.autograd.grad(loss_fn(False), params)
    checkpointed = torch.autograd.grad(loss_fn(True), params)
    text_params = 2 * TINY_TRANSFORMER_BLOCKS * 8
    assert all(g.abs().sum() > 0 for g in plain[:text_params])  # every UNet down and up
    assert all(g.abs().sum() > 0 for g in plain[text_params:])  # every text-encoder down and up
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lora_weights_stay_float32_on_low_precision_base(dtype):
    torch.manual_seed(0)
    base = nn.Linear(16, 8).to(dtype)
    layer = LoraLinear(base, rank=2, alpha=2.0)
    assert layer.down.weight.dtype == layer.up.weight.dtype == torch.float32
    nn.init.normal_(layer.up.weight)
    x = torch.randn(3, 16, dtype=dtype)
    out = layer(x)
    assert out.dtype == dtype
    expected = base(x).float() + layer.up(layer.down(x.float()))
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.02)


# ---------------------------------------------------------------- files


def test_save_load_round_trip_is_exact(injected, tmp_path):
    randomize_up(injected)
    state = lora_state_dict(injected)
    meta = LoraMetadata(
        trigger_phrase="sks plushie", identifier="sks", class_noun="plushie", description="a test subject",
        base_model_hash="ab" * 32, method="personalize", training_config={"lr": 1e-4, "targets": ("to_q", "to_k")},
        rank=4, alpha=8.0,
    )
    path = save_lora(tmp_path / "loras" / "sks.safetensors", state, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["sks.safetensors"]  # no temporary file left
    loaded, loaded_meta = load_lora(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state)
    assert loaded_meta == meta
    assert loaded_meta.package_version == __version__
    assert loaded_meta.training_config == {"lr": 1e-4, "targets": ["to_q", "to_k"]}


def test_file_carries_kohya_and_modelspec_metadata(injected, tmp_path):
    meta = LoraMetadata(trigger_phrase="sks plushie", base_model_hash="cd" * 32, method="ddpo", rank=4, alpha=8.0)
    raw = read_lora_metadata(save_lora(tmp_path / "rl.safetensors", lora_state_dict(injected), meta))
    assert raw["ss_network_dim"] == "4" and float(raw["ss_network_alpha"]) == 8.0
    assert raw["ss_base_model_version"] == "sd_v1"
    assert raw["ss_network_module"] == "networks.lora"
    assert raw["modelspec.trigger_phrase"] == "sks plushie"
    assert raw["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert raw["ss_new_sd_model_hash"] == "cd" * 32
    assert raw["instructbooth.package_version"] == __version__


def test_resume_loads_state_strictly(injected, tmp_path):
    randomize_up(injected)
    state = lora_state_dict(injected)
    fresh = tiny_components(seed=0)
    inject_lora(fresh, LoraConfig(rank=4, alpha=8.0, text_targets=ALL_TEXT), seed=99)
    load_lora_state(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(lora_parameters(fresh), lora_parameters(injected)))
    partial = {k: v for k, v in state.items() if "lora_te_" not in k}
    with pytest.raises(LoraError, match="missing 12 modules"):
        load_lora_state(fresh, partial)
    other_alpha = dict(state, **{"lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0)})
    with pytest.raises(LoraError, match="layers_0_mlp_fc1 has alpha 1.0"):
        load_lora_state(fresh, other_alpha)


# ---------------------------------------------------------------- merging


def test_merge_equals_applying_one_after_the_other():
    first = trained_state(1, LoraConfig(rank=2, alpha=1.0, text_targets=("q_proj", "fc1")))
    second = trained_state(2, LoraConfig(rank=3, alpha=6.0, unet_targets=("to_k", "proj_in"), text_targets=("q_proj",)))
    merged = merge_lora_states(first, second, first_scale=0.7, second_scale=1.5)
    in_sequence, at_once = tiny_components(seed=0), tiny_components(seed=0)
    apply_lora(in_sequence, first, unet_scale=0.7, text_scale=0.7)
    apply_lora(in_sequence, second, unet_scale=1.5, text_scale=1.5)
    apply_lora(at_once, merged)
    for a, b in zip(outputs(in_sequence), outputs(at_once)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    both = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
    assert merged[f"{both}.lora_down.weight"].shape[0] == 5 and float(merged[f"{both}.alpha"]) == 5.0
    proj_in = "lora_unet_up_blocks_1_attentions_1_proj_in.lora_down.weight"
    assert merged[proj_in].shape == (3, 32, 1, 1)  # only in the second: its rank


# ---------------------------------------------------------------- third-party kohya files


def third_party_state() -> tuple[dict[str, torch.Tensor], dict[str, tuple[str, str, float]]]:
    """A kohya-style fp16 file as other trainers write it, and (part, path, scale) per module."""
    gen = torch.Generator().manual_seed(5)

    def pair(out_ch, in_ch, rank, kernel=None, four_d=False):
        down_shape = (rank, in_ch, *kernel) if kernel else (rank, in_ch, 1, 1) if four_d else (rank, in_ch)
        up_shape = (out_ch, rank, 1, 1) if kernel or four_d else (out_ch, rank)
        return torch.randn(down_shape, generator=gen) * 0.1, torch.randn(up_shape, generator=gen) * 0.1

    specs = {  # kohya name: (part, path, pair, alpha)
        "lora_unet_up_blocks_1_resnets_0_conv1": ("unet", RESNET_CONV, pair(32, 96, 4, kernel=(3, 3)), 2.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in": ("unet", PROJ_IN, pair(32, 32, 8, four_d=True), 4.0),
        "lora_unet_up_blocks_1_attentions_0_proj_out": ("unet", PROJ_OUT, pair(32, 32, 2), 1.0),  # 2-D onto 1x1 conv
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2": ("unet", FF, pair(64, 256, 4), 1.0),
        "lora_te_text_model_encoder_layers_1_mlp_fc1": ("text_encoder", TEXT_FC1, pair(64, 32, 4), 16.0),
    }
    state, expected = {}, {}
    for name, (part, path, (down, up), alpha) in specs.items():
        state[f"{name}.lora_down.weight"] = down.half()
        state[f"{name}.lora_up.weight"] = up.half()
        state[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
        expected[name] = (part, path, alpha / down.shape[0])
    return state, expected


def test_third_party_kohya_file_applies_with_the_right_deltas(tmp_path):
    parts = tiny_components(seed=0)
    state, expected = third_party_state()
    path = tmp_path / "third_party.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"ss_network_dim": "8", "ss_network_alpha": "4", "ss_output_name": "x"})
    loaded, meta = load_lora(path)
    assert loaded["lora_unet_up_blocks_1_resnets_0_conv1.lora_down.weight"].dtype == torch.float16
    assert (meta.rank, meta.alpha, meta.method, meta.package_version) == (8, 4.0, "", "")
    before = {name: getattr(parts, part).get_submodule(p).weight.clone() for name, (part, p, _) in expected.items()}
    assert apply_lora(parts, loaded) == len(expected)
    x = torch.randn(1, 96, 6, 6, generator=torch.Generator().manual_seed(0))
    for name, (part, module_path, scale) in expected.items():
        layer = getattr(parts, part).get_submodule(module_path)
        down, up = loaded[f"{name}.lora_down.weight"].float(), loaded[f"{name}.lora_up.weight"].float()
        if module_path == RESNET_CONV:  # a 3x3 conv: the delta acts as conv(down) then 1x1 conv(up)
            lora_out = F.conv2d(F.conv2d(x, down, padding=1), up)
            delta_out = F.conv2d(x, layer.weight - before[name], padding=1)
            torch.testing.assert_close(delta_out, scale * lora_out, atol=1e-5, rtol=1e-4)
        else:
            delta = scale * up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
            torch.testing.assert_close((layer.weight - before[name]).reshape(delta.shape), delta, atol=1e-6, rtol=1e-5)


def test_third_party_file_merges_into_injected_base(injected):
    state, expected = third_party_state()
    base_lora_params = [p.clone() for p in lora_parameters(injected)]
    assert apply_lora(injected, state) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(base_lora_params, lora_parameters(injected)))


# ---------------------------------------------------------------- errors


def test_unknown_modules_are_listed(tiny):
    state = trained_state(1, LoraConfig())
    alien = {
        **state,
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_te_text_model_encoder_layers_11_mlp_fc1.lora_down.weight": torch.zeros(4, 32),
        "lora_te_text_model_encoder_layers_11_mlp_fc1.lora_up.weight": torch.zeros(64, 4),
    }
    assert find_unknown_modules(tiny, alien) == [
        "lora_te_text_model_encoder_layers_11_mlp_fc1", "lora_unet_down_blocks_7_attentions_0_proj_in"]
    weights = [p.clone() for p in tiny.unet.parameters()]
    with pytest.raises(LoraError, match=r"2 LoRA modules match no layer.*layers_11_mlp_fc1.*down_blocks_7"):
        apply_lora(tiny, alien)
    assert all(torch.equal(a, b) for a, b in zip(weights, tiny.unet.parameters()))  # nothing half-applied


def test_shape_mismatch_names_module_and_shapes(tiny):
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"
    state = {f"{name}.lora_down.weight": torch.zeros(4, 768), f"{name}.lora_up.weight": torch.zeros(64, 4)}
    with pytest.raises(LoraError, match=rf"shape mismatch for {name}: lora_down \[4, 768\].*\[64, 32\]"):
        apply_lora(tiny, state)


@pytest.mark.parametrize(
    "key, reason",
    [
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", "SDXL"),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "SDXL"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", "input_blocks"),
        ("conditioner.embedders.0.transformer.text_model.lora_down.weight", "conditioner"),
        ("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight", "PEFT"),
        ("unet.down_blocks.0.attentions.0.proj_in.lora.down.weight", "diffusers"),
        ("lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a", "LoHa"),
    ],
)
def test_foreign_loras_are_refused_by_name(tiny, tmp_path, key, reason):
    state = {key: torch.zeros(4, 32), key.replace("down", "up"): torch.zeros(32, 4)}
    with pytest.raises(LoraError, match=reason):
        apply_lora(tiny, state)
    path = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(LoraError, match=rf"foreign.safetensors: .*{reason}"):
        load_lora(path)


def test_missing_up_weight_is_refused(tiny):
    with pytest.raises(LoraError, match="lack a lora_down or lora_up"):
        apply_lora(tiny, {"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4, 3, 3)})


def test_bad_files_raise_lora_error(tmp_path):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(LoraError, match="corrupt.safetensors is not a readable safetensors file"):
        load_lora(corrupt)
    pickled = tmp_path / "old.ckpt"
    torch.save({"lora_unet_conv_in.lora_down.weight": torch.zeros(1)}, pickled)
    with pytest.raises(LoraError, match=r"pickled \.ckpt/\.pt files are not read"):
        load_lora(pickled)
    with pytest.raises(FileNotFoundError, match="no LoRA file"):
        load_lora(tmp_path / "absent.safetensors")


def test_misuse_is_refused(injected):
    with pytest.raises(LoraError, match="already injected"):
        inject_lora(injected, LoraConfig())
    with pytest.raises(LoraError, match="no LoRA is injected"):
        lora_state_dict(tiny_components(seed=0))
    with pytest.raises(LoraError, match="'to_z' matches no Linear/Conv2d layer in the unet"):
        inject_lora(tiny_components(seed=0), LoraConfig(unet_targets=("to_z",)))
    with pytest.raises(LoraError, match="rank must be >= 1"):
        LoraConfig(rank=0)
    with pytest.raises(LoraError, match="unknown LoRA method 'sft'"):
        LoraMetadata(method="sft")


def test_modelspec_resolution_is_the_trained_one():
    from instructbooth.lora.files import LoraMetadata, metadata_strings

    state = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4),
             "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(4, 2)}
    assert metadata_strings(state, LoraMetadata(training_config={"resolution": 64}))["modelspec.resolution"] == "64x64"
    rl = LoraMetadata(training_config={"rl": {"width": 768, "height": 512}})
    assert metadata_strings(state, rl)["modelspec.resolution"] == "768x512"
    assert "modelspec.resolution" not in metadata_strings(state, LoraMetadata())  # unknown: not claimed


def test_a_lora_with_nan_or_inf_is_not_written(tmp_path):
    from instructbooth.lora.files import LoraMetadata, save_lora
    from instructbooth.lora.keys import LoraError

    state = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 4),
             "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.full((4, 2), float("nan"))}
    with pytest.raises(LoraError, match="NaN or inf values.*nothing was written"):
        save_lora(tmp_path / "x.safetensors", state, LoraMetadata())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, settings", [
    ("rl.config.RLConfig", {"learning_rate": float("inf")}),
    ("rl.config.RLConfig", {"adam_betas": (0.9, float("nan"))}),
    ("preference.dpo.DPOConfig", {"beta": float("inf")}),
    ("preference.pairs.PairConfig", {"guidance": float("nan")}),
])
def test_non_finite_settings_are_refused(config, settings):
    import importlib

    module, name = config.rsplit(".", 1)
    cls = getattr(importlib.import_module(f"instructbooth.{module}"), name)
    with pytest.raises(ValueError, match="must be finite numbers"):
        cls(**settings)


def test_personalize_refuses_a_non_finite_learning_rate(tiny):
    from instructbooth.personalize import PersonalizeConfig, check_config

    with pytest.raises(ValueError, match="finite numbers: learning_rate=inf"):
        check_config(PersonalizeConfig(learning_rate=float("inf"), resolution=32), tiny)
