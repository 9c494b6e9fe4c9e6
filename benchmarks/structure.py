"""Code-structure numbers for issue #13: library lines, longest functions, largest modules and the
length of every node's `execute`. Prints a table and writes benchmarks/results/structure.json.

    python benchmarks/structure.py [ROOT]      # ROOT defaults to the repository (e.g. an older checkout)
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path


def python_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def function_lengths(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(f"{path.name}:{node.name}", node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def execute_lengths(nodes: Path) -> dict[str, int]:
    lengths = {}
    for path in python_files(nodes):
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                for item in cls.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == "execute":
                        lengths[cls.name] = item.end_lineno - item.lineno + 1
    return lengths


def measure(root: Path) -> dict:
    library = python_files(root / "instructbooth")
    lines = {str(path.relative_to(root)): len(path.read_text().splitlines()) for path in library}
    functions = sorted((item for path in library for item in function_lengths(path)), key=lambda item: -item[1])
    return {
        "library_lines": sum(lines.values()),
        "library_files": len(lines),
        "largest_modules": sorted(lines.items(), key=lambda item: -item[1])[:5],
        "longest_functions": functions[:5],
        "node_execute_lines": execute_lengths(root / "nodes"),
        "test_functions": sum(len(path.read_text().split("\ndef test_")) - 1
                              for path in python_files(root / "tests")),
    }


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    result = measure(root)
    print(f"library: {result['library_lines']} lines in {result['library_files']} files")
    for name, count in result["largest_modules"]:
        print(f"  module   {count:5d}  {name}")
    for name, count in result["longest_functions"]:
        print(f"  function {count:5d}  {name}")
    for name, count in sorted(result["node_execute_lines"].items()):
        print(f"  execute  {count:5d}  {name}")
    print(f"test functions: {result['test_functions']}")
    out = Path(__file__).resolve().parent / "results" / "structure.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
