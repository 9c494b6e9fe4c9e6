"""Stand-in for comfy.sd: load_lora_for_models records what it was given."""

LORA_CALLS: list[dict] = []


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    LORA_CALLS.append({"keys": sorted(lora), "strength_model": strength_model, "strength_clip": strength_clip})
    patched_model = getattr(model, "with_lora", lambda *a: model)(lora, strength_model)
    patched_clip = getattr(clip, "with_lora", lambda *a: clip)(lora, strength_clip) if clip is not None else None
    return patched_model, patched_clip
