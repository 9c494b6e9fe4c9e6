"""`train_dpo`: Diffusion-DPO (Wallace et al. 2023) on a LoRA, from stored preference pairs.

The personalized LoRA (if any) is merged into the weights and a fresh LoRA is injected
into the UNet; with that LoRA switched off the model is exactly the starting model, the
frozen reference of the DPO loss. Per step: draw a minibatch of pairs, noise winner and
loser latents with the same noise at the same timestep, compute the model's and the
reference's denoising errors and the loss of `dpo_loss.diffusion_dpo_loss`. The result
is ONE LoRA file: the personalized LoRA and the trained one merged by rank concatenation,
which ComfyUI's stock LoraLoader applies alone to the base checkpoint.

Every random draw comes from one seeded CPU generator whose state goes into checkpoints,
so a resumed CPU run ends with the same LoRA, bit for bit. Evaluations measure the
implicit preference accuracy on the training pairs with fixed (timestep, noise) draws, so
numbers are comparable across steps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Sequence

import torch

from ..components import SDComponents
from ..encoding import encode_images, latent_shape
from ..files import write_json
from ..lora import UNET_ATTENTION_TARGETS, LoraConfig, LoraMetadata, inject_lora, load_lora_state, lora_disabled
from ..lora import lora_merged, lora_state_dict, merge_lora_states, remove_lora, save_lora
from ..prompts import Subject
from ..sampling import PromptEmbeddingCache
from ..training import CheckpointStore, Precision, StepCallback, StepReport, adamw, check_resumable, guarded_step
from ..training import gradient_checkpointing, learning_rate_at, noised, non_finite_problem, notify, per_sample_mse
from ..training import require_finite_weights, restore_trainer_state, set_learning_rate, state_fingerprint
from ..training import precision_problem, trainer_state, training_mode
from .dpo_loss import diffusion_dpo_loss, implicit_accuracy
from ..seeds import derive_seed
from .store import KINDS, PairStore, PreferencePair

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DPOConfig:
    """Every setting of a Diffusion-DPO run; the defaults suit SD1.5 with LoRA on one GPU."""

    RUN_LENGTH: ClassVar[str] = "steps"  # a resumed run may be longer or shorter
    RUN_CONTROL: ClassVar[tuple[str, ...]] = ("checkpoint_every", "keep_checkpoints", "eval_every")  # not the LoRA

    beta: float = 5000.0  # Diffusion-DPO's beta: loss = -log sigmoid(-(beta / 2) * delta), errors averaged
    #                       over pixels (see dpo_loss.py); larger = stay closer to the starting model
    steps: int = 1000  # optimizer steps
    batch_size: int = 4  # pairs per step (each pair: 2 images through the UNet, with and without the LoRA)
    learning_rate: float = 1e-5  # AdamW learning rate, constant after warm-up
    warmup_steps: int = 0  # steps of linear learning-rate warm-up from 0
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW's denominator epsilon
    max_grad_norm: float | None = 1.0  # gradient-norm clipping per step; None: off
    # --- LoRA (a new one, on top of the personalized LoRA)
    lora_rank: int = 8  # rank of the trained LoRA
    lora_alpha: float | None = None  # its scale = alpha / rank; None: alpha = rank (scale 1)
    unet_targets: tuple[str, ...] = UNET_ATTENTION_TARGETS  # UNet layers that get the LoRA
    # --- evaluation on the training pairs
    eval_every: int = 100  # steps between implicit-accuracy evaluations (0: only before and after training)
    eval_draws: int = 4  # fixed (timestep, noise) draws per pair; a pair's delta is averaged over them
    eval_batch_size: int = 8  # pairs per evaluation forward pass
    # --- precision, run control
    mixed_precision: str = "no"  # "no", "fp16" or "bf16": frozen weights in 16 bits, LoRA in fp32
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (less memory, slower)
    seed: int = 0  # seeds the LoRA init, the minibatches, noise, timesteps and evaluation draws
    checkpoint_every: int = 100  # steps between checkpoints (needs a checkpoint folder); 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk

    def __post_init__(self):
        object.__setattr__(self, "unet_targets", tuple([self.unet_targets] if isinstance(self.unet_targets, str)
                                                       else self.unet_targets))
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        problems = []
        if non_finite_problem(self):
            problems.append(non_finite_problem(self))
        if precision_problem(self.mixed_precision):
            problems.append(precision_problem(self.mixed_precision))
        if self.beta <= 0:
            problems.append(f"beta must be > 0, got {self.beta}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            problems.append(f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}")
        if min(self.steps, self.batch_size, self.eval_draws, self.eval_batch_size, self.keep_checkpoints) < 1:
            problems.append("steps, batch_size, eval_draws, eval_batch_size and keep_checkpoints must be >= 1")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if min(self.warmup_steps, self.eval_every, self.checkpoint_every) < 0:
            problems.append("warmup_steps, eval_every and checkpoint_every must be >= 0")
        if problems:
            raise ValueError("invalid DPOConfig: " + "; ".join(problems))

    def lora_config(self) -> LoraConfig:
        return LoraConfig.of(self.lora_rank, self.lora_alpha, unet_targets=self.unet_targets)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping) -> "DPOConfig":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass
class PairData:
    """Preference pairs: under prompts[i], images[winner[i]] is preferred to images[loser[i]].

    Each distinct image is held once, as 8-bit RGB (a prompt's best image is in many pairs)."""

    prompts: list[str]  # [N] the text each pair's images are conditioned on
    images: torch.Tensor  # [M, 3, H, W] uint8
    winner: torch.Tensor  # [N] long, index into images
    loser: torch.Tensor  # [N] long, index into images
    ids: list[str] = field(default_factory=list)  # [N] pair ids (for metrics and the fingerprint)
    kinds: list[str] = field(default_factory=list)  # [N] "self" / "cross" (evaluations report each kind)

    def __post_init__(self):
        n = len(self.prompts)
        if n == 0:
            raise ValueError("no preference pairs to train on; build pairs first, or lower min_margin")
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"PairData images must be uint8 [M, 3, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}; PairData.from_tensors takes images in [0, 1]")
        self.winner, self.loser = torch.as_tensor(self.winner).long(), torch.as_tensor(self.loser).long()
        for name, index in (("winner", self.winner), ("loser", self.loser)):
            if index.shape != (n,) or index.min() < 0 or index.max() >= len(self.images):
                raise ValueError(f"PairData.{name} must hold {n} indices into the {len(self.images)} images")
        self.ids = list(self.ids) or [str(i) for i in range(n)]
        self.kinds = list(self.kinds) or [""] * n
        if len(self.ids) != n or len(self.kinds) != n:
            raise ValueError(f"PairData needs one id and one kind per pair ({n}), "
                             f"got {len(self.ids)} ids and {len(self.kinds)} kinds")

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_tensors(cls, prompts: Sequence[str], winners: torch.Tensor, losers: torch.Tensor,
                     ids: Sequence[str] = (), kinds: Sequence[str] = ()) -> "PairData":
        """From winner and loser images [N, 3, H, W] in [0, 1] (or uint8), pair by pair."""
        if winners.shape != losers.shape or winners.ndim != 4 or winners.shape[0] != len(prompts):
            raise ValueError(f"winners and losers must both be [N={len(prompts)}, 3, H, W], "
                             f"got {tuple(winners.shape)} and {tuple(losers.shape)}")
        n = len(prompts)
        images = torch.cat([_as_uint8(winners), _as_uint8(losers)])
        return cls(list(prompts), images, torch.arange(n), torch.arange(n, 2 * n), list(ids), list(kinds))

    @classmethod
    def from_store(cls, folder: str | Path, kinds: Sequence[str] = KINDS) -> "PairData":
        """The pairs of a pair folder (see pairs.py), of the given kinds ("self", "cross")."""
        store = PairStore(folder)
        return cls.from_pairs(store, store.pairs(kinds))

    @classmethod
    def from_pairs(cls, store: PairStore, pairs: Sequence[PreferencePair]) -> "PairData":
        if not pairs:
            raise ValueError(f"{store.folder} holds no pairs of the chosen kinds; build more, lower min_margin, "
                             "or include both kinds")
        names = list(dict.fromkeys(name for p in pairs for name in (p.winner, p.loser)))
        images = [_as_uint8(store.image(name)[None])[0] for name in names]
        sizes = sorted({tuple(image.shape) for image in images})
        if len(sizes) != 1:
            raise ValueError(f"pair images in {store.folder} have different sizes {sizes}; use one size")
        index = {name: i for i, name in enumerate(names)}
        return cls([p.prompt for p in pairs], torch.stack(images), torch.tensor([index[p.winner] for p in pairs]),
                   torch.tensor([index[p.loser] for p in pairs]), [p.id for p in pairs], [p.kind for p in pairs])

    def fingerprint(self) -> str:
        """sha256 of the ids, prompts, pairing and pixels (to refuse resuming on other pairs)."""
        text = json.dumps([self.ids, self.prompts, self.winner.tolist(), self.loser.tolist()])
        digest = hashlib.sha256(text.encode())
        digest.update(self.images.contiguous().numpy().tobytes())
        return digest.hexdigest()


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.cpu()
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


@dataclass
class DPOResult:
    lora_state: State  # ONE LoRA (kohya keys, float32 CPU): personalized + DPO-trained, for ComfyUI's LoraLoader
    trained_state: State  # the DPO-trained LoRA alone
    metadata: LoraMetadata  # for `save_lora(path, result.lora_state, result.metadata)`
    loss_history: list[float]  # loss of every optimizer step
    history: list[dict]  # per step: {"step", "loss", "accuracy", "reward_margin"} on its minibatch
    evaluations: list[dict]  # implicit accuracy on the training pairs, step 0 (before training) first
    steps_done: int
    stopped: bool = False  # the callback stopped the run before config.steps
    last_checkpoint: Path | None = None


@dataclass
class _Context:
    components: SDComponents
    config: DPOConfig
    params: list[torch.nn.Parameter]
    precision: Precision
    latents: torch.Tensor  # [M, C, h, w] latents of the distinct images, on the device
    winner: torch.Tensor  # [N] long, index into latents, on the device
    loser: torch.Tensor  # [N] long
    embeds: torch.Tensor  # [N, L, D] prompt embeddings on the device
    kinds: list[str]  # [N] pair kinds
    eval_reference: torch.Tensor | None = None  # [2, N] the reference's evaluation errors (fixed draws: computed once)


# --- the trainer --------------------------------------------------------------------------------


def train_dpo(
    components: SDComponents,
    data: PairData | str | Path,
    config: DPOConfig = DPOConfig(),
    callback: StepCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    base_lora: Mapping[str, torch.Tensor] | None = None,
    *,
    subject: Subject | None = None,
    base_model_hash: str = "",
) -> DPOResult:
    """Trains a LoRA with Diffusion-DPO on `data`: PairData, or a pair folder made by
    `pairs.build_pairs` (all its pairs; `PairData.from_store(folder, kinds)` picks kinds).

    `base_lora` is the personalized LoRA the pairs were made with: the starting model and
    frozen reference. `callback(StepReport)` runs after every step; returning False (or
    raising StopTraining) stops with a partial result (`stopped=True`). With a
    `checkpoint_dir`, checkpoints are written every `config.checkpoint_every` steps, on
    stop and at the end, with `metrics.json` beside them; `resume=True` continues from the
    newest one, `resume=False` deletes them and starts over. `subject` and
    `base_model_hash` go into the LoRA's metadata. The components come back as they were,
    except that with mixed precision their frozen weights stay in 16 bits.
    """
    if not isinstance(data, PairData):
        data = PairData.from_store(data)
    check_data(components, data)
    require_finite_weights(components.modules(), "the base model")
    store = CheckpointStore(checkpoint_dir, config.keep_checkpoints) if checkpoint_dir is not None else None
    if store is not None and not resume:
        store.clear()
    base = {k: v.detach().to("cpu", torch.float32) for k, v in base_lora.items()} if base_lora else None
    # every module in eval: SD1.5 has no dropout, and the model and reference passes stay comparable
    with training_mode(components.modules()), _trainable_lora(components, config, base) as params:
        precision = Precision.create(config.mixed_precision, components.device)
        precision.cast_frozen(components.modules(), params)
        ctx = _prepare(components, config, params, precision, data)
        with gradient_checkpointing([components.unet], config.gradient_checkpointing):
            return _train(ctx, data, base, store, callback, checkpoint_dir, subject, base_model_hash)


@contextlib.contextmanager
def _trainable_lora(components: SDComponents, config: DPOConfig, base: State | None) -> Iterator[list]:
    """The personalized LoRA merged and a new trainable LoRA injected; both undone after."""
    with lora_merged(components, base):
        params = inject_lora(components, config.lora_config(), seed=config.seed)
        try:
            yield params
        finally:
            remove_lora(components)


def _prepare(components, config, params, precision, data: PairData) -> _Context:
    """Encodes each distinct image (a seeded VAE posterior sample) and each prompt once."""
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "encode"))
    chunk, images, device = config.eval_batch_size, data.images, components.device
    with torch.no_grad(), precision.autocast():
        latents = torch.cat([encode_images(components, images[i : i + chunk].float() / 255, generator=generator).float()
                             for i in range(0, len(images), chunk)])
        embeds = PromptEmbeddingCache(components)(data.prompts).float()
    return _Context(components, config, params, precision, latents, data.winner.to(device), data.loser.to(device),
                    embeds.to(device), list(data.kinds))


def _train(ctx: _Context, data, base, store, callback, metrics_dir, subject, base_model_hash) -> DPOResult:
    config = ctx.config
    optimizer = adamw(ctx.params, config)
    generator = torch.Generator().manual_seed(config.seed)
    fingerprints = {"pairs": data.fingerprint(), "base_lora": state_fingerprint(base)}
    history, evaluations = [], []
    saved = store.load() if store is not None else None
    if saved is not None:
        history, evaluations = _restore(ctx, saved, optimizer, generator, fingerprints)
    start = history[-1]["step"] if history else 0
    last = store.latest() if store is not None else None
    if not evaluations:
        evaluations.append(evaluate(ctx, 0))

    def result(stopped: bool) -> DPOResult:
        trained = lora_state_dict(ctx.components)
        one_file = merge_lora_states(base, trained) if base else trained
        done = history[-1]["step"] if history else 0
        metadata = _metadata(config, subject, base_model_hash, done, len(data), fingerprints["pairs"])
        return DPOResult(one_file, trained, metadata, [h["loss"] for h in history], history, evaluations, done,
                         stopped, last)

    for step in range(start, config.steps):
        set_learning_rate(optimizer, learning_rate_at(step, config))
        history.append(train_step(ctx, optimizer, generator, step + 1, store))
        done = step + 1
        if (config.eval_every and done % config.eval_every == 0) or done == config.steps:
            evaluations.append(evaluate(ctx, done))
        stop = notify(callback, StepReport(done, config.steps, history[-1]["loss"]))
        periodic = config.checkpoint_every and done % config.checkpoint_every == 0
        if store is not None and (stop or periodic or done == config.steps):
            state = _checkpoint(ctx, optimizer, generator, history, evaluations, fingerprints)
            last = store.save(done, state)
            write_json(Path(metrics_dir) / "metrics.json", {"steps": history, "evaluations": evaluations})
        if stop:
            return result(stopped=done < config.steps)
    return result(stopped=False)


def train_step(ctx: _Context, optimizer, generator: torch.Generator, step: int, store) -> dict:
    """One optimizer step on a random minibatch of pairs; returns its statistics."""
    config, count = ctx.config, len(ctx.winner)
    rows = torch.randperm(count, generator=generator)[: min(config.batch_size, count)]
    noise = torch.randn((len(rows), *ctx.latents.shape[1:]), generator=generator)
    timesteps = torch.randint(0, ctx.components.scheduler.config.num_train_timesteps, (len(rows),), generator=generator)
    errors = pair_errors(ctx, rows, noise, timesteps, with_grad=True)
    out = diffusion_dpo_loss(*errors, beta=config.beta)
    value = guarded_step(optimizer, ctx.params, ctx.precision, out.loss, step, store, config.max_grad_norm)
    return {"step": step, "loss": value, "accuracy": float(out.implicit_accuracy),
            "reward_margin": float(out.reward_margin)}


def pair_errors(ctx: _Context, rows: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                with_grad: bool, reference: bool = True) -> tuple[torch.Tensor, ...]:
    """(model e_w, model e_l, reference e_w, reference e_l), each [m], for the pairs at `rows`:
    winner and loser noised with the same `noise` [m, C, h, w] at the same `timesteps` [m].
    `reference=False` skips the reference pass and returns only the model's two."""
    device, scheduler = ctx.components.device, ctx.components.scheduler
    rows = rows.to(device)
    noise, timesteps = noise.to(device), timesteps.to(device)
    clean = torch.cat([ctx.latents[ctx.winner[rows]], ctx.latents[ctx.loser[rows]]])  # [2m, C, h, w]
    noise2, t2 = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
    inputs, target = noised(scheduler, clean, noise2, t2)
    embeds = ctx.embeds[rows].repeat(2, 1, 1)
    unet, m = ctx.components.unet, len(rows)
    with torch.set_grad_enabled(with_grad), ctx.precision.autocast():
        model = per_sample_mse(unet(inputs, t2, encoder_hidden_states=embeds).sample, target)
    if not reference:
        return model[:m], model[m:]
    with torch.no_grad(), lora_disabled(ctx.components), ctx.precision.autocast():
        frozen = per_sample_mse(unet(inputs, t2, encoder_hidden_states=embeds).sample, target)
    return model[:m], model[m:], frozen[:m], frozen[m:]


@torch.no_grad()
def evaluate(ctx: _Context, step: int) -> dict:
    """Implicit preference accuracy on the training pairs with fixed draws.

    Each pair gets `eval_draws` (timestep, noise) draws, the same at every evaluation;
    its delta is averaged over them. "implicit_accuracy": share of pairs with mean delta
    < 0 (0.5 before training: the model is the reference); "model_accuracy": share whose
    own mean error is lower on the winner than on the loser (reference-free);
    "reference_accuracy": the same for the reference (a constant of the pairs);
    "by_kind": the implicit accuracy of each pair kind ("self", "cross"); "loss": the DPO
    loss of the draw-averaged errors. The reference's errors are computed once per run."""
    config, count = ctx.config, len(ctx.winner)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "evaluate"))
    steps = ctx.components.scheduler.config.num_train_timesteps
    need_reference = ctx.eval_reference is None
    totals = torch.zeros(4 if need_reference else 2, count, dtype=torch.float64)  # model w, l (, reference w, l)
    for _ in range(config.eval_draws):
        noise = torch.randn((count, *ctx.latents.shape[1:]), generator=generator)
        timesteps = torch.randint(0, steps, (count,), generator=generator)
        for start in range(0, count, config.eval_batch_size):
            rows = torch.arange(start, min(start + config.eval_batch_size, count))
            errors = pair_errors(ctx, rows, noise[rows], timesteps[rows], with_grad=False, reference=need_reference)
            totals[:, rows] += torch.stack([e.double().cpu() for e in errors])
    totals /= config.eval_draws
    if need_reference:
        ctx.eval_reference = totals[2:].clone()
    model_w, model_l = totals[:2]
    ref_w, ref_l = ctx.eval_reference
    out = diffusion_dpo_loss(model_w, model_l, ref_w, ref_l, config.beta)
    by_kind = {kind: float(implicit_accuracy(out.delta[torch.tensor([k == kind for k in ctx.kinds])]))
               for kind in dict.fromkeys(ctx.kinds) if kind}
    return {"step": step, "implicit_accuracy": float(out.implicit_accuracy), "by_kind": by_kind,
            "model_accuracy": float(implicit_accuracy(model_w - model_l)),
            "reference_accuracy": float(implicit_accuracy(ref_w - ref_l)),
            "loss": float(out.loss), "reward_margin": float(out.reward_margin), "mean_delta": float(out.delta.mean())}


# --- checkpoints, metadata, files ---------------------------------------------------------------


def _checkpoint(ctx: _Context, optimizer, generator, history, evaluations, fingerprints) -> dict:
    return {"trainable": lora_state_dict(ctx.components), "history": json.dumps(history),
            "evaluations": json.dumps(evaluations), **fingerprints,
            **trainer_state(ctx.config, optimizer, ctx.precision, {"train": generator})}


def _restore(ctx: _Context, saved: dict, optimizer, generator, fingerprints) -> tuple[list, list]:
    changed = [name for name in ("pairs", "base_lora") if saved.get(name) != fingerprints[name]]
    check_resumable(saved, ctx.config, "DPO", [f"the {name.replace('_', ' ')}" for name in changed])
    load_lora_state(ctx.components, saved["trainable"])
    restore_trainer_state(saved, optimizer, ctx.precision, {"train": generator})
    return json.loads(saved["history"]), json.loads(saved["evaluations"])


def _metadata(config: DPOConfig, subject: Subject | None, base_model_hash: str, steps_done: int, pairs: int,
              fingerprint: str) -> LoraMetadata:
    training = {"dpo": config.to_dict(), "steps_done": steps_done, "pairs": pairs, "pairs_fingerprint": fingerprint}
    return LoraMetadata.naming(subject, base_model_hash=base_model_hash, method="dpo", training_config=training)


def save_result(result: DPOResult, path: str | Path) -> Path:
    """Writes the one-file LoRA (safetensors with metadata) and `<name>.metrics.json` beside it."""
    path = save_lora(path, result.lora_state, result.metadata)
    write_json(path.with_suffix(".metrics.json"), {"steps_done": result.steps_done, "stopped": result.stopped,
                                                  "evaluations": result.evaluations, "steps": result.history})
    return path


def check_data(components: SDComponents, data: PairData) -> None:
    """Raises ValueError when the pair images cannot go through this model."""
    height, width = data.images.shape[-2:]
    _, latent_height, _ = latent_shape(components, height, width)
    unet_factor = 2 ** (len(components.unet.config.block_out_channels) - 1)
    step = max(height // max(latent_height, 1), 1) * unet_factor  # pixels per UNet cell at the coarsest level
    if height % step or width % step:
        raise ValueError(f"pair images are {height}x{width} pixels; this model needs sides that are multiples "
                         f"of {step}; make the pairs at such a size")
