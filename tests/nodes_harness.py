"""Loads the node pack against the stand-ins in tests/comfy_standins, without leaking them.

`loaded_pack(root)` puts the stand-ins first on sys.path, roots the stand-in folder_paths
at `root` (models/, output/, temp/), imports the repository as the package
`instructbooth_pack` (as ComfyUI imports a custom node folder), and on exit removes every
stand-in and pack module and the path entry, so other tests see a clean interpreter.
The pack's library is then `instructbooth_pack.instructbooth`: tests that hand objects to
nodes take them from there (`pack_module(...)`), not from the top-level `instructbooth`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).resolve().parent / "comfy_standins"
PACKAGE = "instructbooth_pack"
STANDIN_MODULES = ("comfy", "comfy_api", "folder_paths", "fake_models")


@contextlib.contextmanager
def loaded_pack(root: Path) -> Iterator:
    if any(_owned(name) for name in sys.modules):
        raise RuntimeError("stand-in or pack modules are already loaded; nested loaded_pack() is not supported")
    sys.path.insert(0, str(STANDINS))
    try:
        import folder_paths

        folder_paths.reset(str(root))
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pack
        spec.loader.exec_module(pack)
        yield pack
    finally:
        sys.path.remove(str(STANDINS))
        for name in [name for name in sys.modules if _owned(name)]:
            del sys.modules[name]


def pack_module(name: str):
    """A module of the loaded pack, e.g. pack_module("nodes.bridge") or pack_module("instructbooth.lora")."""
    return importlib.import_module(f"{PACKAGE}.{name}")


def standin(name: str):
    """A stand-in module, e.g. standin("comfy.utils")."""
    return importlib.import_module(name)


def reset_records() -> None:
    """Clears what the stand-ins recorded (progress, memory calls, LoRA applications, cancel)."""
    for name in ("comfy.utils", "comfy.model_management", "comfy.sd"):
        importlib.import_module(name).reset()


def _owned(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in (*STANDIN_MODULES, PACKAGE))


def schema_info(node_cls) -> dict:
    """A node's stand-in schema in the shape of ComfyUI's /object_info entry (the parts tests compare)."""
    schema = node_cls.define_schema()
    inputs: dict[str, dict] = {"required": {}, "optional": {}}
    for item in schema.inputs:
        options = {k: v for k, v in item.extra.items() if v is not None}
        if item.tooltip:
            options["tooltip"] = item.tooltip
        inputs["optional" if item.optional else "required"][item.id] = [item.io_type, options]
    return {
        "input": {kind: entries for kind, entries in inputs.items() if entries},
        "input_order": {kind: list(entries) for kind, entries in inputs.items() if entries},
        "output": [o.io_type for o in schema.outputs],
        "output_is_list": [o.is_output_list for o in schema.outputs],
        "output_name": [o.display_name or o.io_type for o in schema.outputs],
        "output_tooltips": [o.tooltip for o in schema.outputs],
        "output_node": schema.is_output_node,
        "name": schema.node_id,
        "display_name": schema.display_name,
        "category": schema.category,
        "description": schema.description,
    }
