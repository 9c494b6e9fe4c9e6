"""Stand-in for comfy.model_management: records memory calls; interrupt flag for tests."""

CALLS: list[str] = []
INTERRUPTED = False


class InterruptProcessingException(Exception):
    pass


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


def load_models_gpu(models, **kwargs):
    CALLS.append("load_models_gpu")
