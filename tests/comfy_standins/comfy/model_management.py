"""Stand-in for comfy.model_management: records memory calls; an interrupt flag for tests."""

CALLS: list[str] = []
INTERRUPTED = False


class InterruptProcessingException(Exception):
    pass


def reset() -> None:
    global INTERRUPTED
    CALLS.clear()
    INTERRUPTED = False


def interrupt_current_processing(value: bool = True) -> None:
    global INTERRUPTED
    INTERRUPTED = value


def throw_exception_if_processing_interrupted():
    global INTERRUPTED
    if INTERRUPTED:
        INTERRUPTED = False
        raise InterruptProcessingException()


def unload_all_models():
    CALLS.append("unload_all_models")


def soft_empty_cache(force=False):
    CALLS.append("soft_empty_cache")


def get_torch_device():
    import torch

    return torch.device("cpu")


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    CALLS.append("load_models_gpu")
