"""Seeds derived from what a random draw is for, so a draw depends on its purpose alone.

`derive_seed(config.seed, epoch, "prompts")` is a 63-bit seed from any printable parts; every
random draw of an RL epoch, a preference pair's images or an evaluation comes from a generator
seeded this way (`generator_for`), so a resumed run needs no generator state and the draws do
not depend on how many processes share the work or which batch an image is in.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, e.g. derive_seed(config.seed, epoch, "prompts")."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator_for(*parts: Any) -> torch.Generator:
    """A CPU generator seeded with `derive_seed(*parts)`."""
    return torch.Generator("cpu").manual_seed(derive_seed(*parts))
