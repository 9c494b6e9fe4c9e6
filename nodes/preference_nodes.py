"""Preference alignment (InstructEngine-style pairs + Diffusion-DPO) as two nodes."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..instructbooth.preference.dpo import DPOConfig, PairData, save_result, train_dpo
from ..instructbooth.preference.pairs import CROSS_MODES, PairConfig, build_pairs
from ..instructbooth.preference.store import PairStore
from ..instructbooth.preference.taxonomy import Taxonomy
from ..instructbooth.prompts import Subject
from ..instructbooth.training import state_fingerprint
from . import bridge
from .reward_nodes import IMAGE_REWARD
from .runs import RunFolder, config_from_inputs, fingerprint_tensors, interruptible, keyed_run, publish_lora, train_on_comfy_weights

PAIR_DEFAULTS, DPO_DEFAULTS = PairConfig(), DPOConfig()
LORA_MODEL, LOSS_MAP = io.Custom("LORA_MODEL"), io.Custom("LOSS_MAP")
PREFERENCE_PAIRS = io.Custom("PREFERENCE_PAIRS")  # {"folder", "count", "subject", "base_lora"}
PREVIEW_PAIRS = 4  # pairs shown in the pairs image (winner left, loser right)


class PreferencePairs(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothPreferencePairs",
            display_name="InstructBooth Preference Pairs",
            category="InstructBooth",
            description="Makes preference pairs from the model itself: for analogous prompts of the shipped "
            "taxonomy ('{subject} holding a red / a blue umbrella') it samples several images, lets ImageReward judge "
            "them and keeps best-vs-worst and cross-prompt pairs with a clear margin. Resumable; for DPO.",
            inputs=[
                io.Model.Input("model", tooltip="The base SD1.5 model from Load Checkpoint."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint."),
                IMAGE_REWARD.Input("image_reward", tooltip="The judge, from ImageReward Loader."),
                io.String.Input("identifier", default="sks", tooltip="The subject's identifier ('sks')."),
                io.String.Input("class_noun", default="plushie", tooltip="The subject's class noun ('plushie')."),
                io.Int.Input("prompt_pairs", default=PAIR_DEFAULTS.prompt_pairs, min=1, max=10000,
                             tooltip="Analogous prompt pairs drawn from the taxonomy (up to 2 prompts each)."),
                io.Int.Input("images_per_prompt", default=PAIR_DEFAULTS.images_per_prompt, min=2, max=64,
                             tooltip="Images sampled per prompt; the judge keeps the best and the worst."),
                io.Int.Input("sample_steps", default=PAIR_DEFAULTS.sample_steps, min=1, max=1000,
                             tooltip="Sampler steps per image."),
                io.Float.Input("guidance", default=PAIR_DEFAULTS.guidance, min=1.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the samples."),
                io.Int.Input("resolution", default=PAIR_DEFAULTS.height, min=64, max=2048, step=64,
                             tooltip="Side of the sampled images in pixels."),
                io.Float.Input("min_margin", default=PAIR_DEFAULTS.min_margin, min=0.0, max=10.0, step=0.01,
                               tooltip="Smallest reward difference that makes a pair (ImageReward units)."),
                io.Combo.Input("cross_pairs", options=list(CROSS_MODES), default=PAIR_DEFAULTS.cross_pairs,
                               tooltip="Pairs across analogous prompts: 'both' keeps them when the judge agrees "
                               "both ways, 'each' keeps each agreeing direction, 'off' none."),
                io.Int.Input("seed", default=PAIR_DEFAULTS.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds the prompt draw and every image's noise."),
                io.String.Input("name", default="sks_plushie_pairs",
                                tooltip="Name of the pair folder under output/instructbooth/."),
                LORA_MODEL.Input("lora", optional=True, tooltip="The subject LoRA from Personalize (merged while sampling)."),
            ],
            outputs=[
                PREFERENCE_PAIRS.Output(display_name="pairs", tooltip="The stored pairs, for InstructBooth DPO."),
                io.Image.Output(display_name="examples", tooltip="A few pairs: preferred image left, rejected right."),
                io.String.Output(display_name="summary", tooltip="How many pairs of each kind were kept."),
            ],
        )

    @classmethod
    def validate_inputs(cls, identifier, name) -> bool | str:
        if identifier is not None and not identifier.strip():
            return "identifier is empty; use the one the subject LoRA was trained with, e.g. 'sks'"
        try:
            if name is not None:
                bridge.safe_relative_name(name, "output/instructbooth")
        except bridge.NodeInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, model, clip, vae, image_reward, identifier, class_noun, name, lora=None, **settings):
        config = config_from_inputs(PairConfig, settings)
        subject = Subject(identifier.strip(), class_noun.strip())
        bridge.safe_relative_name(name, "output/instructbooth")
        state = bridge.comfy_state_dict(model, clip, vae)

        def build(run: RunFolder) -> None:
            train_on_comfy_weights(bridge.trainable_copy(state), model, config.prompt_pairs * 2, lambda parts, progress:
                                   build_pairs(parts, interruptible(image_reward), Taxonomy.default(), run.path, config,
                                               progress, base_lora=lora, subject=subject))

        run = keyed_run("pairs", name, config, build, finished=lambda run: PairStore(run.path).is_complete(),
                        weights=fingerprint_tensors(state), base_lora=state_fingerprint(lora),
                        judge=fingerprint_tensors(image_reward.model.state_dict()),
                        subject=[subject.identifier, subject.class_noun])
        store = PairStore(run.path)
        pairs = store.pairs()
        kinds = {kind: sum(p.kind == kind for p in pairs) for kind in ("self", "cross")}
        summary = f"{len(pairs)} pairs ({kinds['self']} self, {kinds['cross']} cross) in {run.path}"
        handle = {"folder": str(run.path), "count": len(pairs), "base_lora": state_fingerprint(lora),
                  "subject": [subject.identifier, subject.class_noun]}
        return io.NodeOutput(handle, _examples(store, pairs), summary)


class DPOAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothDPO",
            display_name="InstructBooth DPO",
            category="InstructBooth",
            description="Diffusion-DPO on preference pairs: trains a LoRA so the model prefers the winners, staying "
            "close to the starting model (beta). Saves ONE LoRA (subject + DPO) in models/loras; re-runs reuse or "
            "resume.",
            inputs=[
                io.Model.Input("model", tooltip="The base SD1.5 model the pairs were made with."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint (encodes the pair images)."),
                PREFERENCE_PAIRS.Input("pairs", tooltip="From InstructBooth Preference Pairs."),
                io.Float.Input("beta", default=DPO_DEFAULTS.beta, min=1.0, max=1e6, step=100.0,
                               tooltip="Larger stays closer to the starting model (Diffusion-DPO uses 2000-5000)."),
                io.Int.Input("steps", default=DPO_DEFAULTS.steps, min=1, max=100000, tooltip="Optimizer steps."),
                io.Int.Input("batch_size", default=DPO_DEFAULTS.batch_size, min=1, max=256, tooltip="Pairs per step."),
                io.Float.Input("learning_rate", default=DPO_DEFAULTS.learning_rate, min=1e-8, max=1e-2, step=1e-7,
                               round=1e-8, tooltip="AdamW learning rate of the DPO LoRA."),
                io.Int.Input("lora_rank", default=DPO_DEFAULTS.lora_rank, min=1, max=128,
                             tooltip="Rank of the new LoRA (alpha equals the rank)."),
                io.Combo.Input("mixed_precision", options=["no", "fp16", "bf16"], default=DPO_DEFAULTS.mixed_precision,
                               tooltip="16-bit frozen weights (fp16/bf16) save memory on GPUs; 'no' is float32."),
                io.Boolean.Input("gradient_checkpointing", default=DPO_DEFAULTS.gradient_checkpointing,
                                 tooltip="Recompute UNet activations in the backward pass: less memory, slower."),
                io.Int.Input("seed", default=DPO_DEFAULTS.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds the LoRA init, minibatches, noise and timesteps."),
                io.Int.Input("checkpoint_every", default=DPO_DEFAULTS.checkpoint_every, min=0, max=100000,
                             tooltip="Steps between checkpoints (a cancelled run resumes from the last)."),
                io.String.Input("lora_name", default="instructbooth/sks_plushie_dpo",
                                tooltip="File name of the result in models/loras (subject + DPO in one file)."),
                LORA_MODEL.Input("lora", optional=True,
                                 tooltip="The subject LoRA the pairs were made with (the starting model)."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The base model with the aligned LoRA applied."),
                io.Clip.Output(display_name="CLIP", tooltip="The text encoder with the aligned LoRA applied."),
                LORA_MODEL.Output(display_name="lora", tooltip="The aligned LoRA (subject + DPO) as one state."),
                LOSS_MAP.Output(display_name="loss_map", tooltip="DPO loss per step (for Plot Loss Graph)."),
                io.String.Output(display_name="summary", tooltip="Implicit preference accuracy before and after."),
            ],
        )

    @classmethod
    def validate_inputs(cls, lora_name) -> bool | str:
        return bridge.name_problem("loras", lora_name, must_exist=False) or True

    @classmethod
    def execute(cls, model, clip, vae, pairs, lora_name, lora=None, **settings) -> io.NodeOutput:
        if pairs["base_lora"] != state_fingerprint(lora):
            raise bridge.NodeInputError("connect the same subject LoRA (or none) that the pairs were made with: "
                                        "DPO starts from that model")
        config = config_from_inputs(DPOConfig, settings)
        data = PairData.from_store(pairs["folder"])
        state = bridge.comfy_state_dict(model, clip, vae)
        weights = fingerprint_tensors(state)

        def train(run: RunFolder) -> None:
            result = train_on_comfy_weights(bridge.trainable_copy(state), model, config.steps, lambda parts, progress:
                                            train_dpo(parts, data, config, progress, run.path, base_lora=lora,
                                                      subject=Subject(*pairs["subject"])))
            save_result(result, run.result_path)

        run = keyed_run("dpo", lora_name, config, train, weights=weights, pairs=data.fingerprint(),
                        base_lora=pairs["base_lora"])
        model, clip, tuned, _ = publish_lora(run, model, clip, lora_name, weights)
        metrics = run.read_json("result.metrics.json", {})
        evaluations = metrics.get("evaluations", [])
        summary = " -> ".join(f"step {e['step']}: {e['implicit_accuracy']:.2f}" for e in evaluations[:1] + evaluations[-1:])
        return io.NodeOutput(model, clip, tuned, {"loss": [s["loss"] for s in metrics.get("steps", [])]},
                             f"implicit preference accuracy {summary}")



def _examples(store: PairStore, pairs) -> torch.Tensor:
    """Up to PREVIEW_PAIRS pairs as one IMAGE: each row a winner and its loser side by side."""
    if not pairs:
        return torch.zeros(1, 64, 128, 3)
    rows = [torch.cat([store.image(p.winner), store.image(p.loser)], dim=2) for p in pairs[:PREVIEW_PAIRS]]
    return torch.cat(rows, dim=1).permute(1, 2, 0)[None].contiguous()
