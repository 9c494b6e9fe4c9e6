"""Every setting of an RL fine-tuning run, with its meaning and unit."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import ClassVar

from ..lora import UNET_ATTENTION_TARGETS, LoraConfig
from ..sampling import SamplerSettings
from ..training import non_finite_problem, precision_problem
from .rwr import WEIGHTINGS as RWR_WEIGHTINGS

METHODS = ("ddpo", "rwr", "lee")
ADVANTAGE_MODES = ("group", "tracker", "batch")


@dataclass(frozen=True)
class RLConfig:
    """An RL run. Defaults: DDPO's SD1.5 LoRA settings (Black et al. 2023, kvablack/ddpo-pytorch
    config/base.py) scaled to one 8-24 GB GPU, with the changes this project measured (each
    field's comment gives the reason and the number; benchmarks/ and docs/quality.md hold them)."""

    RUN_LENGTH: ClassVar[str] = "epochs"  # a resumed run may be longer or shorter
    RUN_CONTROL: ClassVar[tuple[str, ...]] = (  # settings that do not change the LoRA
        "keep_checkpoints", "heldout_every", "parallel_batches")

    method: str = "ddpo"  # "ddpo": clipped importance-sampled policy gradient (Black et al. 2023);
    #   "rwr": reward-weighted denoising loss (rwr_weighting) + beta x regulariser, fresh samples every epoch;
    #   "lee": Lee et al. 2023 as published: one offline round (the first epoch's samples, scored once, are
    #   trained on in every epoch), weights = the reward itself (use a learned reward in [0, 1]), + beta x regulariser
    # --- sampling (each epoch draws fresh samples from the current model)
    sample_steps: int = 50  # DDIM steps per sample (DDPO's 50)
    eta: float = 1.0  # DDIM noise: 1.0 = DDPM's variance (DDPO's setting); must be > 0 (a stochastic policy)
    guidance: float = 5.0  # classifier-free guidance scale (DDPO's 5); 1.0 skips the unconditional pass
    negative_prompt: str = ""  # the unconditional branch's prompt
    height: int = 512  # image height in pixels
    width: int = 512  # image width in pixels
    sample_batch_size: int = 4  # samples per sampling call, per process (4 images of one prompt, 8 UNet rows with CFG)
    sample_batches: int = 4  # sampling calls per epoch, per process: 16 samples = 4 prompts x 4 images
    epochs: int = 50  # sample -> reward -> train rounds (800 samples in all)
    images_per_prompt: int = 4  # images of each drawn prompt, in one sampling batch: the "group" baseline
    #   (the tracker at 8 samples per epoch over 80 prompt keys fell back to batch statistics for 100% of
    #   samples in 50 epochs; groups of 4 give every sample its own prompt's baseline: benchmarks/advantages.py)
    # --- training
    train_batch_size: int = 2  # samples per forward/backward, per process (the micro-batch: sets the memory)
    gradient_accumulation_steps: int = 4  # micro-batches per optimizer step: 2 x 4 = 8 samples per update, 2 updates
    #   per epoch (ddpo-pytorch: 8-24 per GPU per update; on the demo, one update per epoch on all 64 samples
    #   reached held-out alignment 0.438 from DreamBooth's 0.385, with the gradient of 16 samples "mostly noise")
    inner_epochs: int = 1  # passes over each epoch's samples
    timestep_fraction: float = 1.0  # DDPO: share of the window's steps trained on (a random subset per sample)
    timestep_window: float = 0.96  # DDPO: share of each trajectory, from its start, whose steps may be trained on.
    #   A step's score-function gradient scales with 1 / its noise std. On SD1.5's schedule at 50 steps the last
    #   two steps have std 0.040 and 0.021 against a median of 0.29, so they would weigh ~30% of the gradient while
    #   barely changing the image; 0.96 trains the first 48. (Demo, 10 steps, last std 0.03: no learning at all
    #   with 1.0, +0.14 brightness in 7 epochs with 0.7.) DDPO itself trains every step (1.0).
    clip_range: float = 1e-4  # DDPO: the likelihood ratio is clipped to [1 - clip, 1 + clip]
    advantage: str = "group"  # "group": per prompt within the epoch (needs images_per_prompt >= 2); "tracker":
    #   per-prompt running stats (DDPO; falls back to the split's batch stats until tracker_min_count); "batch"
    tracker_buffer: int = 32  # rewards kept per prompt by the tracker
    tracker_min_count: int = 16  # below this many, the tracker uses the epoch's statistics of the prompt's split
    adv_clip: float | None = 5.0  # advantages are clamped to [-adv_clip, adv_clip]; None: no clamp
    learning_rate: float = 3e-4  # AdamW learning rate (constant; DDPO's LoRA rate)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW's moment decay rates (beta1, beta2)
    adam_eps: float = 1e-8  # AdamW's denominator epsilon
    max_grad_norm: float | None = 1.0  # gradient-norm clipping per optimizer step; None: off
    # --- LoRA
    lora_rank: int = 4  # rank of the new trainable LoRA (on top of the personalized one)
    lora_alpha: float | None = None  # its scale = alpha / rank; None: alpha = rank (scale 1)
    unet_targets: tuple[str, ...] = UNET_ATTENTION_TARGETS  # UNet layers that get the new LoRA (attention: on every
    #   layer the demo's RL learned textures that fooled its reward)
    continue_base_lora: bool = False  # train the personalized LoRA itself instead of a new one on top
    # --- the InstructBooth prompt scheme
    identifier_ratio: float = 0.25  # share of prompts with the identifier ("sks plushie ..."); the rest "a plushie ..."
    #   (demo with the subject-weighted reward, 3 seeds: held-out alignment 0.424 at 0.25 against 0.343 at 0.5)
    use_description: bool = False  # append the subject's detailed description to identifier prompts
    reward_plain_prompt: bool = True  # score images against the prompt without the identifier (a reward model
    #                                   does not know "sks"); False: against the prompt as generated
    # --- reward-weighted fine-tuning (method "rwr")
    rwr_weighting: str = "exp"  # method "rwr": "exp": B softmax(r / temperature); "linear": shifted rewards, mean 1;
    #   "reward": the reward itself clamped at 0 (what method "lee" always uses)
    rwr_temperature: float = 1.0  # temperature of "exp" weights (in reward units)
    rwr_beta: float = 1.0  # Lee et al.'s beta: weight of the denoising loss on the regulariser images (the subject
    #   photos by default, or regulariser_images: class images, a captioned folder); needs them when > 0
    # --- keeping the subject
    kl_weight: float = 0.0  # DDPO: weight of the per-step KL to the frozen personalized model on identifier samples
    subject_threshold: float | None = None  # stop when the subject measure on identifier samples falls below this
    # --- evaluation, precision, run control
    heldout_every: int = 1  # epochs between held-out evaluations (0: never)
    heldout_seeds: int = 1  # samples per held-out prompt (fixed seeds, comparable across epochs)
    mixed_precision: str = "no"  # "no", "fp16" or "bf16": frozen weights in 16 bits, LoRA and DDIM math in fp32
    gradient_checkpointing: bool = False  # recompute UNet activations in backward (less memory, slower)
    parallel_batches: int = 1  # CPU, DDPO: sampling batches and micro-batches run this many at once, each in its own
    #   Python thread with one torch thread (the demo on 2 cores: 2, an RL epoch in about half the time); the results
    #   are the same bit for bit; each running micro-batch holds its own graph in memory
    seed: int = 0  # seeds prompts, noise, shuffles and the LoRA init
    keep_checkpoints: int = 2  # newest per-epoch checkpoints kept on disk

    def __post_init__(self):
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid RLConfig: " + "; ".join(problems))

    def _problems(self):
        yield from self._value_problems()
        yield from self._batch_problems()
        yield from self._learning_problems()

    def _value_problems(self):
        if non_finite_problem(self):
            yield non_finite_problem(self)
        if precision_problem(self.mixed_precision):
            yield precision_problem(self.mixed_precision)
        if self.method not in METHODS:
            yield f"method must be one of {METHODS}, got {self.method!r}"
        if self.advantage not in ADVANTAGE_MODES:
            yield f"advantage must be one of {ADVANTAGE_MODES}, got {self.advantage!r}"
        if self.rwr_weighting not in RWR_WEIGHTINGS:
            yield f"rwr_weighting must be one of {RWR_WEIGHTINGS}, got {self.rwr_weighting!r}"
        if self.eta <= 0:
            yield f"eta must be > 0 (log-probabilities need a stochastic sampler), got {self.eta}"
        if not 0 < self.timestep_fraction <= 1:
            yield f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}"
        if not 0 < self.timestep_window <= 1:
            yield f"timestep_window must be in (0, 1], got {self.timestep_window}"
        if not 0 <= self.identifier_ratio <= 1:
            yield f"identifier_ratio must be in [0, 1], got {self.identifier_ratio}"
        if self.clip_range <= 0:
            yield f"clip_range must be > 0, got {self.clip_range}"
        if self.height % 8 or self.width % 8 or min(self.height, self.width) < 8:
            yield (f"height and width must be multiples of 8 (the VAE works in 8-pixel blocks), got "
                   f"{self.width}x{self.height}; {self.width // 8 * 8}x{self.height // 8 * 8} is the nearest below")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            yield f"max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm}: 0 zeroes every update"
        if self.method == "lee" and self.inner_epochs < 1:
            yield "inner_epochs must be >= 1"
        if self.kl_weight < 0 or (self.kl_weight > 0 and self.method != "ddpo"):
            yield "kl_weight must be >= 0 and only applies to method 'ddpo' (RWR's guard is rwr_beta)"
        if self.continue_base_lora and self.kl_weight > 0:
            yield "kl_weight needs a new LoRA on top of the personalized one (continue_base_lora=False)"
        yield from self._parallel_problems()

    def _parallel_problems(self):
        if self.parallel_batches < 1:
            yield f"parallel_batches must be >= 1 (1: one batch at a time), got {self.parallel_batches}"
        elif self.parallel_batches > 1:
            shared = [(self.method != "ddpo", f"method {self.method!r} (its regulariser prompts share one cache)"),
                      (self.kl_weight > 0, "kl_weight > 0 (the KL guard switches the LoRA off for every thread)"),
                      (self.mixed_precision == "fp16", "fp16 (one gradient scaler for every thread)")]
            for clash, why in shared:
                if clash:
                    yield f"parallel_batches > 1 runs DDPO batches in threads and cannot be used with {why}; set " \
                          "parallel_batches=1"

    def _batch_problems(self):
        if min(self.sample_steps, self.sample_batch_size, self.sample_batches, self.epochs, self.inner_epochs,
               self.train_batch_size, self.gradient_accumulation_steps) < 1:
            yield ("sample_steps, sample_batch_size, sample_batches, epochs, inner_epochs, train_batch_size and "
                   "gradient_accumulation_steps must be >= 1")
            return
        if self.samples_per_epoch % self.samples_per_update:
            yield (f"train_batch_size x gradient_accumulation_steps ({self.train_batch_size} x "
                   f"{self.gradient_accumulation_steps} = {self.samples_per_update} samples per update) must divide "
                   f"the samples per epoch per process ({self.sample_batches} x {self.sample_batch_size} = "
                   f"{self.samples_per_epoch})")
        if self.images_per_prompt < 1 or self.sample_batch_size % self.images_per_prompt:
            yield (f"images_per_prompt {self.images_per_prompt} must be >= 1 and divide sample_batch_size "
                   f"{self.sample_batch_size} (a prompt's images share one sampling batch)")

    def _learning_problems(self):
        """Settings under which training runs but cannot learn: refused, with what to change."""
        if self.learning_rate <= 0:
            yield f"learning_rate must be > 0, got {self.learning_rate}"
        if self.adv_clip is not None and self.adv_clip <= 0:
            yield f"adv_clip must be > 0 or None, got {self.adv_clip} (a clip at 0 sets every advantage to 0)"
        if self.method == "rwr" and self.rwr_weighting == "exp" and self.rwr_temperature <= 0:
            yield f"rwr_temperature must be > 0, got {self.rwr_temperature}"
        if self.method != "ddpo":
            return
        if self.advantage == "group" and self.images_per_prompt < 2:
            yield ("advantage 'group' compares each image with the other images of its prompt, so with "
                   "images_per_prompt=1 every advantage is 0 and nothing is learned: set images_per_prompt >= 2 "
                   "(e.g. 4) or advantage='tracker'")
        if self.advantage == "tracker" and self.tracker_min_count > self.tracker_buffer:
            yield (f"tracker_min_count {self.tracker_min_count} > tracker_buffer {self.tracker_buffer}: no prompt "
                   "could ever use its own statistics; lower tracker_min_count or raise tracker_buffer")
        if self.advantage == "tracker" and min(self.tracker_buffer, self.tracker_min_count) < 1:
            yield "tracker_buffer and tracker_min_count must be >= 1"
        if self.advantage in ("batch", "tracker") and self.samples_per_epoch < 2:
            yield (f"advantage {self.advantage!r} normalises against the epoch's rewards, and with 1 sample per "
                   "epoch every advantage is 0: draw at least 2 (sample_batch_size x sample_batches)")

    @property
    def offline(self) -> bool:
        """Lee et al.'s one round: the first epoch's samples are trained on in every epoch."""
        return self.method == "lee"

    @property
    def samples_per_update(self) -> int:
        """Samples per optimizer step, per process (micro-batch x accumulation steps)."""
        return self.train_batch_size * self.gradient_accumulation_steps

    @property
    def updates_per_epoch(self) -> int:
        """Optimizer steps per epoch (all inner epochs)."""
        return self.inner_epochs * self.samples_per_epoch // self.samples_per_update

    @property
    def total_updates(self) -> int:
        """Optimizer steps of the whole run."""
        return self.epochs * self.updates_per_epoch

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
        return LoraConfig.of(self.lora_rank, self.lora_alpha, unet_targets=tuple(self.unet_targets))

    def sampler(self) -> SamplerSettings:
        """How RL draws its samples (and the held-out images)."""
        return SamplerSettings(self.sample_steps, self.guidance, self.eta, self.height, self.width, self.negative_prompt)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "RLConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("adam_betas", "unet_targets"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)
