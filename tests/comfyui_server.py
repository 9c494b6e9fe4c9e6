"""A real ComfyUI server for integration tests, on 127.0.0.1 with this pack installed.

The server runs from COMFYUI_PATH (ComfyUI v0.8.0) with `--cpu` and `--base-directory`
pointing at a temporary folder, so models, outputs and custom_nodes are the test's own:
the pack is linked into <base>/custom_nodes/. The Python that runs it is COMFYUI_PYTHON,
else <COMFYUI_PATH>/../comfyvenv/bin/python when that exists, else this interpreter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "instructbooth-comfyui"


def comfyui_path() -> Path | None:
    path = os.environ.get("COMFYUI_PATH")
    return Path(path) if path else None


def comfyui_python() -> str:
    explicit = os.environ.get("COMFYUI_PYTHON")
    if explicit:
        return explicit
    path = comfyui_path()
    beside = path.parent / "comfyvenv" / "bin" / "python" if path else None
    return str(beside) if beside and beside.exists() else sys.executable


def skip_reason() -> str | None:
    path = comfyui_path()
    if path is None:
        return "COMFYUI_PATH is not set: point it at a ComfyUI v0.8.0 checkout to run the real-server tests"
    if not (path / "main.py").is_file():
        return f"COMFYUI_PATH={path} has no main.py"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """Starts ComfyUI in a subprocess; use as a context manager."""

    def __init__(self, base_dir: Path, startup_timeout: float = 240.0):
        self.base_dir = Path(base_dir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "comfyui.log"
        self.startup_timeout = startup_timeout
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ComfyServer":
        custom_nodes = self.base_dir / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        link = custom_nodes / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        command = [
            comfyui_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
        ]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=comfyui_path(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_until_up()
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited early:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1.0)
        raise TimeoutError(f"ComfyUI did not start in {self.startup_timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def post(self, path: str, data: dict | None = None):
        body = json.dumps(data or {}).encode()
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def queue(self, prompt: dict) -> str:
        try:
            answer = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"ComfyUI refused the prompt: {error.read().decode(errors='replace')}") from error
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """The history entry of a finished prompt (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            if prompt_id in history and history[prompt_id].get("status", {}).get("status_str") == "error":
                return history[prompt_id]
            time.sleep(1.0)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log()[-4000:]}")

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        entry = self.wait(self.queue(prompt), timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            raise RuntimeError(f"prompt failed: {json.dumps(status)[:4000]}\n{self.log()[-4000:]}")
        return entry

    def interrupt(self) -> None:
        self.post("/interrupt")
