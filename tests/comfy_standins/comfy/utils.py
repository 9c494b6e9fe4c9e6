"""Stand-in for comfy.utils: a ProgressBar that records updates and can simulate cancel."""

PROGRESS_LOG: list[tuple] = []  # (value, total, has_preview) per update
PREVIEWS: list = []  # the preview tuples passed, in order
CANCEL_AT: int | None = None  # a test sets this to make update_absolute raise at that value


def reset() -> None:
    global CANCEL_AT
    PROGRESS_LOG.clear()
    PREVIEWS.clear()
    CANCEL_AT = None


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if CANCEL_AT is not None and value >= CANCEL_AT:  # ComfyUI's hook raises before reporting
            from comfy.model_management import InterruptProcessingException

            raise InterruptProcessingException()
        PROGRESS_LOG.append((self.current, self.total, preview is not None))
        if preview is not None:
            PREVIEWS.append(preview)

    def update(self, value):
        self.update_absolute(self.current + value)


def load_torch_file(path, safe_load=True):
    from safetensors.torch import load_file

    return load_file(path)
