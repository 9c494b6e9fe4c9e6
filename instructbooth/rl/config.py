"""Every setting of an RL fine-tuning run, with its meaning and unit."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..lora import UNET_ATTENTION_TARGETS, LoraConfig

METHODS = ("ddpo", "rwr")
ADVANTAGE_MODES = ("tracker", "group", "batch")

# Config fields a resumed run may change (everything else must match the checkpoint).
RESUMABLE_CHANGES = ("epochs", "keep_checkpoints", "heldout_every")


@dataclass(frozen=True)
class RLConfig:
    """An RL run; defaults follow DDPO's SD1.5 settings at 512 px with LoRA, scaled to one GPU."""

    method: str = "ddpo"  # "ddpo": clipped importance-sampled policy gradient (Black et al. 2023);
    #                       "rwr": reward-weighted denoising loss + subject-image regulariser (Lee et al. 2023)
    # --- sampling (each epoch draws fresh samples from the current model)
    sample_steps: int = 50  # DDIM steps per sample
    eta: float = 1.0  # DDIM noise: 1.0 = DDPM's variance (DDPO's setting); must be > 0 (a stochastic policy)
    guidance: float = 5.0  # classifier-free guidance scale; 1.0 skips the unconditional pass (half the UNet work)
    negative_prompt: str = ""  # the unconditional branch's prompt
    height: int = 512  # image height in pixels
    width: int = 512  # image width in pixels
    sample_batch_size: int = 4  # samples per sampling call, per process
    sample_batches: int = 2  # sampling calls per epoch, per process (samples per epoch = processes x batches x size)
    epochs: int = 50  # sample -> reward -> train rounds
    images_per_prompt: int = 1  # images of each drawn prompt per sampling batch (for advantage "group")
    # --- training
    train_batch_size: int = 2  # samples per optimizer step, per process (must divide the samples per epoch)
    inner_epochs: int = 1  # passes over each epoch's samples
    timestep_fraction: float = 1.0  # DDPO: share of the window's steps trained on (a random subset per sample)
    timestep_window: float = 1.0  # DDPO: share of each trajectory, from its start, whose steps may be trained on.
    #   The score-function gradient of a step scales with 1 / its noise std, and the last steps have the smallest
    #   std (0.03 vs 0.3-1.0 at 10 steps on the demo's schedule) while they change the image least: left in, they
    #   can drown out the early steps that decide the layout. 0.9 of 10 steps leaves out the last one.
    clip_range: float = 1e-4  # DDPO: the likelihood ratio is clipped to [1 - clip, 1 + clip]
    advantage: str = "tracker"  # "tracker": per-prompt running stats; "group": per prompt within the epoch; "batch"
    tracker_buffer: int = 32  # rewards kept per prompt by the tracker
    tracker_min_count: int = 16  # below this many, the tracker uses the epoch's mean and std instead
    adv_clip: float | None = 5.0  # advantages are clamped to [-adv_clip, adv_clip]; None: no clamp
    learning_rate: float = 3e-4  # AdamW learning rate (constant)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # gradient-norm clipping per optimizer step; None: off
    # --- LoRA
    lora_rank: int = 4  # rank of the new trainable LoRA (on top of the personalized one)
    lora_alpha: float = 4.0  # its scale = alpha / rank
    unet_targets: tuple[str, ...] = UNET_ATTENTION_TARGETS  # UNet layers that get the new LoRA
    continue_base_lora: bool = False  # train the personalized LoRA itself instead of a new one on top
    # --- the InstructBooth prompt scheme
    identifier_ratio: float = 0.5  # share of prompts with the identifier ("sks plushie ..."); the rest "a plushie ..."
    use_description: bool = False  # append the subject's detailed description to identifier prompts
    reward_plain_prompt: bool = True  # score images against the prompt without the identifier (a reward model
    #                                   does not know "sks"); False: against the prompt as generated
    # --- reward-weighted fine-tuning (method "rwr")
    rwr_weighting: str = "exp"  # "exp": weights = B softmax(r / temperature); "linear": shifted rewards, mean 1
    rwr_temperature: float = 1.0  # temperature of "exp" weights (in reward units)
    prior_weight: float = 1.0  # lambda: weight of the denoising loss on the subject images (needs subject_images)
    # --- keeping the subject
    kl_weight: float = 0.0  # DDPO: weight of the per-step KL to the frozen personalized model on identifier samples
    subject_threshold: float | None = None  # stop when the subject measure on identifier samples falls below this
    # --- evaluation, precision, run control
    heldout_every: int = 1  # epochs between held-out evaluations (0: never)
    heldout_seeds: int = 1  # samples per held-out prompt (fixed seeds, comparable across epochs)
    mixed_precision: str = "no"  # "no", "fp16" or "bf16": frozen weights in 16 bits, LoRA and DDIM math in fp32
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (less memory, slower)
    seed: int = 0  # seeds prompts, noise, shuffles and the LoRA init
    keep_checkpoints: int = 2  # newest per-epoch checkpoints kept on disk

    def __post_init__(self):
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid RLConfig: " + "; ".join(problems))

    def _problems(self):
        if self.method not in METHODS:
            yield f"method must be one of {METHODS}, got {self.method!r}"
        if self.advantage not in ADVANTAGE_MODES:
            yield f"advantage must be one of {ADVANTAGE_MODES}, got {self.advantage!r}"
        if self.eta <= 0:
            yield f"eta must be > 0 (log-probabilities need a stochastic sampler), got {self.eta}"
        if not 0 < self.timestep_fraction <= 1:
            yield f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}"
        if not 0 < self.timestep_window <= 1:
            yield f"timestep_window must be in (0, 1], got {self.timestep_window}"
        if not 0 <= self.identifier_ratio <= 1:
            yield f"identifier_ratio must be in [0, 1], got {self.identifier_ratio}"
        if self.samples_per_epoch % self.train_batch_size:
            yield (f"train_batch_size {self.train_batch_size} must divide the samples per epoch per process "
                   f"({self.sample_batches} x {self.sample_batch_size})")
        if min(self.sample_steps, self.sample_batch_size, self.sample_batches, self.epochs, self.inner_epochs) < 1:
            yield "sample_steps, sample_batch_size, sample_batches, epochs and inner_epochs must be >= 1"
        if self.images_per_prompt < 1 or self.sample_batch_size % self.images_per_prompt:
            yield (f"images_per_prompt {self.images_per_prompt} must be >= 1 and divide sample_batch_size "
                   f"{self.sample_batch_size} (a prompt's images share one sampling batch)")
        if self.clip_range <= 0:
            yield f"clip_range must be > 0, got {self.clip_range}"
        if self.kl_weight < 0 or (self.kl_weight > 0 and self.method != "ddpo"):
            yield "kl_weight must be >= 0 and only applies to method 'ddpo' (RWR's guard is prior_weight)"
        if self.continue_base_lora and self.kl_weight > 0:
            yield "kl_weight needs a new LoRA on top of the personalized one (continue_base_lora=False)"

    @property
    def samples_per_epoch(self) -> int:
        """Samples each process draws per epoch."""
        return self.sample_batches * self.sample_batch_size

    @property
    def window_steps(self) -> int:
        """DDPO: the first steps of each trajectory that training draws from."""
        return max(1, round(self.timestep_window * self.sample_steps))

    @property
    def train_timesteps(self) -> int:
        """DDPO: steps of each trajectory trained on per inner epoch."""
        return max(1, round(self.timestep_fraction * self.window_steps))

    def lora_config(self) -> LoraConfig:
        return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, unet_targets=tuple(self.unet_targets))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "RLConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("adam_betas", "unet_targets"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)
