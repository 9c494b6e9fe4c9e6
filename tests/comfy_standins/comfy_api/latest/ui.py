"""Stand-in for comfy_api.latest.ui."""


class PreviewImage:
    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        self.image = image


class PreviewText:
    def __init__(self, value: str, **kwargs):
        self.value = value
