"""Preference-pair alignment in the spirit of InstructEngine (Lu et al. 2025).

- `taxonomy`: a prompt taxonomy (themes x subtopics x attributes, an editable JSON or
  YAML file) and the analogous prompt pairs it yields: two prompts of one subtopic that
  differ in exactly one attribute ("{subject} holding a red umbrella" / "... a blue umbrella").
- `pairs`: pair construction. K images per prompt from the current model, judged by any
  reward; best-vs-worst pairs with a clear margin and cross-validation pairs between
  analogous prompts; stored on disk (PNG + JSON) and resumable.
- `dpo_loss`: the Diffusion-DPO loss (Wallace et al. 2023), a pure tensor function.
- `dpo`: `train_dpo`, the Diffusion-DPO trainer on a LoRA.

Import the submodules directly; this package imports nothing at load time.
"""
