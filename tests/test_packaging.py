"""The pack installs, registers only inside ComfyUI, and keeps its layers apart."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from instructbooth.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "instructbooth"
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_declares_the_comfy_registry_fields():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert project["scripts"]["instructbooth"] == "instructbooth.cli:main"
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)
    assert comfy["requires-comfyui"] == ">=0.8.0"
    assert "test" in project["optional-dependencies"]


def test_runtime_requirements_are_loose_and_match_requirements_txt():
    declared = pyproject()["project"]["dependencies"]
    assert not [d for d in declared if "==" in d], "run-time requirements must not pin exact versions"
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted(declared)
    assert not any(name in " ".join(declared) for name in ("image-reward", "timm", "fairscale", "torchvision"))


def test_cli_lists_every_command():
    help_text = build_parser().format_help()
    for name in ("personalize", "rl", "score", "generate", "demo", "dpo"):
        assert name in COMMANDS and name in help_text


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_comfyui_nor_itself_by_absolute_name():
    offenders = {}
    for path in LIBRARY.rglob("*.py"):
        bad = _imported_modules(path) & (COMFY_MODULES | {"instructbooth"})
        if bad and path.name != "cli.py":  # cli imports commands by their installed name, lazily
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert not offenders, f"library modules must use relative imports and never ComfyUI: {offenders}"


def test_nodes_import_the_library_relatively():
    for path in (REPO / "nodes").rglob("*.py"):
        assert "instructbooth" not in _imported_modules(path), f"{path.name}: use `from ..instructbooth import ...`"


def test_root_init_registers_nothing_outside_comfyui():
    spec = importlib.util.spec_from_file_location("pack_under_test", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    spec.loader.exec_module(module)
    assert not hasattr(module, "comfy_entrypoint")
    assert not {m for m in set(sys.modules) - before if m.startswith("pack_under_test.")}


def _comfy_cli() -> str | None:
    beside_python = Path(sys.executable).parent / "comfy"  # the venv's script when PATH lacks it
    return str(beside_python) if beside_python.exists() else shutil.which("comfy")


@pytest.mark.skipif(_comfy_cli() is None, reason="comfy-cli is not installed (pip install comfy-cli)")
def test_comfy_node_validate_passes():
    result = subprocess.run([_comfy_cli(), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "validation checks passed" in output, output
