"""Stand-in for comfy.sd: load_lora_for_models records what it was given and patches nothing."""

LORA_CALLS: list[dict] = []


def reset() -> None:
    LORA_CALLS.clear()


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    LORA_CALLS.append({"keys": sorted(lora), "strength_model": strength_model, "strength_clip": strength_clip})
    patched_model = model.with_lora(lora, strength_model) if hasattr(model, "with_lora") else model
    patched_clip = clip.with_lora(lora, strength_clip) if hasattr(clip, "with_lora") else clip
    return patched_model, patched_clip
