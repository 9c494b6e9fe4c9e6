"""SD1.5 components from LDM single-file checkpoints, state dicts and diffusers folders, offline,
and back (details: `convert`).

Modules: `convert` (LDM single-file checkpoints and diffusers folders <-> SDComponents),
`files` (reading checkpoint files safely), `keys` (LDM <-> diffusers key names),
`architecture` (the architecture read from a state dict's keys and shapes).
"""

from __future__ import annotations

from .convert import *  # noqa: F403 (the package is its main module's public names)
from .convert import __all__  # noqa: F401
