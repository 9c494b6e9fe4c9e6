"""Run Python code inside a real ComfyUI (its own venv, CPU mode) and get results back.

Tests that compare against ComfyUI call `run_in_comfyui(code, inputs)`; the code runs in a
subprocess with ComfyUI importable (`import comfy.sd` works) and finds these globals:

    INPUTS   dict of tensors passed by the caller (read from a temporary safetensors file)
    RESULT   dict to fill with JSON-able values       -> ComfyRun.values
    TENSORS  dict to fill with tensors                  -> ComfyRun.tensors
    WORKDIR  a temporary folder (pathlib.Path) for files the caller reads afterwards

Where ComfyUI is (environment variables):
    COMFYUI_PATH    the ComfyUI checkout (tests needing it skip when unset)
    COMFYUI_PYTHON  its interpreter; else $COMFYUI_PATH/../comfyvenv/bin/python when that
                    exists; else `python` from PATH.
ComfyUI is put in CPU mode (`comfy.cli_args.args.cpu = True`) before anything imports
`comfy.model_management`; the subprocess gets HF_HUB_OFFLINE=1 and, unless set already,
OMP_NUM_THREADS=1 (test models are small and the machine is shared).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PRELUDE = """
import json, os, pathlib, sys
COMFYUI_PATH = os.environ["COMFYUI_PATH"]
sys.path.insert(0, COMFYUI_PATH)
os.chdir(COMFYUI_PATH)
import comfy.cli_args
comfy.cli_args.args.cpu = True
import torch
from safetensors.torch import load_file, save_file
WORKDIR = pathlib.Path(os.environ["IB_WORKDIR"])
INPUTS = load_file(str(WORKDIR / "inputs.safetensors"))
RESULT, TENSORS = {}, {}
"""

EPILOGUE = """
save_file({k: v.detach().cpu().contiguous() for k, v in TENSORS.items()}, str(WORKDIR / "tensors.safetensors"))
(WORKDIR / "result.json").write_text(json.dumps(RESULT))
"""


@dataclass
class ComfyRun:
    """What a snippet left in RESULT and TENSORS, plus its combined output for debugging."""

    values: dict
    tensors: dict[str, torch.Tensor]
    log: str
    workdir: Path


def comfyui_path() -> Path | None:
    """The ComfyUI checkout named by $COMFYUI_PATH, or None when unset."""
    value = os.environ.get("COMFYUI_PATH")
    return Path(value).resolve() if value else None


def skip_reason() -> str | None:
    """Why ComfyUI tests cannot run here, or None when they can."""
    path = comfyui_path()
    if path is None:
        return "COMFYUI_PATH is not set (point it at a ComfyUI v0.8+ checkout to run these tests)"
    if not (path / "comfy" / "sd.py").is_file():
        return f"COMFYUI_PATH={path} does not look like a ComfyUI checkout (no comfy/sd.py)"
    return None


def comfyui_python() -> str:
    """$COMFYUI_PYTHON, else the sibling venv ../comfyvenv, else `python` on PATH."""
    explicit = os.environ.get("COMFYUI_PYTHON")
    if explicit:
        return explicit
    path = comfyui_path()
    sibling = path.parent / "comfyvenv" / "bin" / "python" if path else None
    if sibling is not None and sibling.exists():
        return str(sibling)
    found = shutil.which("python")
    if found is None:
        raise RuntimeError("no Python for ComfyUI: set COMFYUI_PYTHON")
    return found


def run_in_comfyui(
    code: str,
    inputs: dict[str, torch.Tensor] | None = None,
    workdir: str | os.PathLike | None = None,
    timeout: float = 600,
) -> ComfyRun:
    """Runs `code` in ComfyUI's interpreter (see the module docstring); raises on failure.

    `workdir` keeps the snippet's files (default: a fresh temporary folder that the caller
    may delete; pass pytest's tmp_path).
    """
    reason = skip_reason()
    if reason is not None:
        raise RuntimeError(reason)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="comfyui_run_"))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in (inputs or {}).items()}, str(folder / "inputs.safetensors"))
    script = folder / "snippet.py"
    script.write_text(PRELUDE + textwrap.dedent(code) + EPILOGUE, encoding="utf-8")
    done = subprocess.run(
        [comfyui_python(), str(script)],
        cwd=comfyui_path(),
        env=_environment(folder),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ComfyUI snippet failed (exit {done.returncode}):\n{log[-4000:]}")
    return ComfyRun(
        values=json.loads((folder / "result.json").read_text()),
        tensors=load_file(str(folder / "tensors.safetensors")),
        log=log,
        workdir=folder,
    )


def _environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COMFYUI_PATH=str(comfyui_path()), IB_WORKDIR=str(folder), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")  # small test models; spare the shared cores
    env.pop("PYTHONPATH", None)  # our venv's paths must not shadow ComfyUI's packages
    return env
