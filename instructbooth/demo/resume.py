"""Re-running the demo into the same folder: resume a run with the same inputs, start over otherwise.

`prepare_run_folder(out, config)` compares a fingerprint of everything that decides the
demo's results (the whole DemoConfig and the demo model's weights) with the one recorded
in `out/demo_run.json`. The same: the stages resume from their checkpoints (the
personalization and RL trainers check their own settings again). Different or absent:
the outputs of an earlier demo run are removed (only the files the demo writes) and the new
fingerprint is recorded, so an interrupted run never mixes with another's. A folder that
holds such files without being a demo run's is refused, not emptied.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..files import write_json

RUN_RECORD = "demo_run.json"
PERSONALIZE_DIR, RL_DIR = "personalize", "rl"  # stage checkpoint folders inside the run folder
STAGE_FOLDERS = (PERSONALIZE_DIR, RL_DIR, "reference", "class")
STAGE_FILES = ("dreambooth.safetensors", "instructbooth.safetensors", "demo_metrics.json", "report.md", "report.html")


def weights_fingerprint(weights: str | Path | None) -> str:
    """sha256 of the demo model's weight files: the shipped ones (None), a folder's
    demo_model.* files or a checkpoint file; "random" for untrained weights."""
    if weights == "random":
        return "random"
    if weights is None:
        path = Path(__file__).resolve().parent
    else:
        path = Path(weights)
    files = [path] if path.is_file() else sorted(path.glob("demo_model.*"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def run_fingerprint(config_dict: dict, weights: str | Path | None) -> str:
    text = json.dumps({"config": config_dict, "weights": weights_fingerprint(weights)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def prepare_run_folder(out: Path, config_dict: dict, weights: str | Path | None) -> bool:
    """True when `out` holds a run with the same fingerprint (resume it); otherwise removes
    the earlier run's outputs, records this run and returns False."""
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(config_dict, weights)
    record = out / RUN_RECORD
    if record.is_file():
        try:
            if json.loads(record.read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
                return True
        except (OSError, ValueError):
            pass  # an unreadable record: start over
    present = [name for name in STAGE_FOLDERS + STAGE_FILES if (out / name).exists()]
    if present and not _written_by_demo(out):
        raise ValueError(f"{out} already holds {', '.join(present)}, not from a demo run; the demo would replace "
                         "them: give --out a new or empty folder")
    for name in STAGE_FOLDERS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in STAGE_FILES + tuple(p.name for p in out.glob("grid_*.png")):
        (out / name).unlink(missing_ok=True)
    write_json(record, {"fingerprint": fingerprint, "config": config_dict})
    return False


def _written_by_demo(out: Path) -> bool:
    """A run record, or the metrics file of a demo from before run records."""
    for name in (RUN_RECORD, "demo_metrics.json"):
        try:
            if "config" in json.loads((out / name).read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError):
            continue
    return False
