"""Stand-in for comfy_api.latest: the V3 schema classes, recording what nodes declare."""

from . import io, ui  # noqa: F401


class ComfyExtension:
    async def on_load(self) -> None:
        return None

    async def get_node_list(self):
        raise NotImplementedError
