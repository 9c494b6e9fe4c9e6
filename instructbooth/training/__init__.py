"""What every trainer shares; nothing here knows which stage it serves.

- `harness`: grad mode and module modes, AdamW and warm-up from the config, the guarded
  optimizer step, the checkpoint entries and resume refusals every trainer writes;
- `denoising`: noise and timesteps, x_t and the UNet's target, per-sample MSE;
- `checkpoints`: `CheckpointStore` (numbered files, atomic, pruned), RNG states, fingerprints;
- `precision`: 16-bit frozen weights with fp32 trainable parameters, gradient checkpointing;
- `guards`: NaN/inf in losses, gradients, weights and settings;
- `callbacks`: the per-step `StepReport` callback protocol.

A trainer keeps its config, its pure loss, its batch making and its step body.
"""

from .callbacks import StepCallback, StepReport, StopTraining, notify
from .checkpoints import (
    CheckpointStore,
    capture_rng,
    config_mismatch,
    restore_rng,
    sampled_fingerprint,
    state_fingerprint,
)
from .denoising import denoising_target, draw_noise, noised, per_sample_mse
from .guards import (
    NonFiniteLossError,
    non_finite_keys,
    non_finite_problem,
    non_finite_settings,
    require_finite,
    require_finite_weights,
)
from .harness import (
    adamw,
    check_resumable,
    guarded_step,
    learning_rate_at,
    restore_trainer_state,
    resumable_changes,
    set_learning_rate,
    trainer_state,
    training_mode,
)
from .precision import PRECISIONS, GradientRecorder, Precision, gradient_checkpointing, precision_problem

__all__ = [
    "PRECISIONS", "CheckpointStore", "GradientRecorder", "NonFiniteLossError", "Precision", "StepCallback", "StepReport", "StopTraining",
    "adamw", "capture_rng", "check_resumable", "config_mismatch", "denoising_target", "draw_noise",
    "gradient_checkpointing", "guarded_step", "learning_rate_at", "noised", "non_finite_keys", "non_finite_problem",
    "non_finite_settings", "notify", "per_sample_mse", "precision_problem", "require_finite", "require_finite_weights", "restore_rng",
    "restore_trainer_state", "resumable_changes", "sampled_fingerprint", "set_learning_rate", "state_fingerprint", "trainer_state",
    "training_mode",
]
