"""Reward fine-tuning of diffusion models: DDPO and reward-weighted regression.

Pure pieces (`advantages`, `ddpo`, `rwr`) are tensor functions tested with exact
numbers; `trainer.train_rl` runs the epoch loop (sample -> reward -> train).
Import the submodules directly; this package imports nothing at load time.
"""
