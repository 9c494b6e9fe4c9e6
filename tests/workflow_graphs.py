"""ComfyUI workflow files: UI format -> API format, and checks against node schemas.

Schemas are /object_info entries (`{"input": {"required": {name: [type, options]}, ...},
"input_order": ..., "output": [...]}`): for core nodes a snapshot taken from ComfyUI v0.8.0
(tests/data/comfyui_core_nodes.json), for this pack the stand-in schemas (nodes_harness).

UI format (what the frontend saves and the template browser loads): `nodes` with `type`,
`inputs` (slots: name, type, link), `outputs` (name, type, links) and `widgets_values` in
widget order, plus `links` = [id, from_node, from_slot, to_node, to_slot, type]. A seed
widget with `control_after_generate` and an `image_upload` combo each add one extra value.
API format (what POST /prompt takes): {node id: {"class_type", "inputs": {name: value or
[from node id, output index]}}}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
API_FOLDER = WORKFLOWS / "api"
# The template browser shows a custom node pack's template by its file name alone (it is both the
# card's title and its description in frontend 1.35), so the files are named for what they do.
TITLES = {
    "personalize": "1 Personalize - teach SD1.5 your subject from a few photos",
    "instructbooth_full": "2 InstructBooth - personalize, RL fine-tune, render unseen prompts",
    "score_and_rerank": "3 ImageReward - score a batch and keep the best of N",
    "controlnet": "4 The tuned LoRA with ControlNet",
    "evaluate": "5 Evaluate - DreamBooth vs InstructBooth LoRA on held-out prompts",
}


def workflow_path(key: str) -> Path:
    """The UI-format file of a shipped workflow, by its short key ("personalize", ...)."""
    return WORKFLOWS / f"{TITLES[key]}.json"
CORE_SNAPSHOT = Path(__file__).resolve().parent / "data" / "comfyui_core_nodes.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "audio_upload", "video_upload", "file_upload")
VIRTUAL_TYPES = {"Note", "MarkdownNote", "Reroute"}  # frontend-only nodes, not sent to the server
# Combos listing files of the user's installation: any file name of the right kind is fine.
FILE_COMBOS = {"ckpt_name", "lora_name", "control_net_name", "image", "folder", "reward_file", "model_file"}


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def ui_workflow_paths() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def api_path(ui_path: Path) -> Path:
    return API_FOLDER / ui_path.name


# --- schema helpers ---------------------------------------------------------------------------


def input_spec(info: dict, name: str) -> tuple[str, dict] | None:
    """(type, options) of an input; a V1 combo's option list becomes ("COMBO", {"options": [...]})."""
    for kind in ("required", "optional"):
        entry = info.get("input", {}).get(kind, {}).get(name)
        if entry is not None:
            kind_type = entry[0]
            options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if isinstance(kind_type, list):
                return "COMBO", {**options, "options": kind_type}
            return kind_type, options
    return None


def input_names(info: dict, kind: str | None = None) -> list[str]:
    order = info.get("input_order") or {k: list(v) for k, v in info.get("input", {}).items()}
    kinds = [kind] if kind else ["required", "optional"]
    return [name for k in kinds for name in order.get(k, [])]


def widget_names(info: dict) -> list[str]:
    return [name for name in input_names(info) if input_spec(info, name)[0] in WIDGET_TYPES]


SEED_NAMES = ("seed", "noise_seed")


def has_control_widget(name: str, options: dict) -> bool:
    """The frontend's rule (1.35): `control_after_generate ?? name in ("seed", "noise_seed")`,
    so an INT named seed gets a "control after generate" widget unless it declares otherwise."""
    declared = options.get("control_after_generate")
    return bool(declared) if declared is not None else name in SEED_NAMES


def widget_slots(info: dict) -> list[tuple[str, int]]:
    """(widget name, number of widgets_values it takes) in widget order."""
    slots = []
    for name in widget_names(info):
        options = input_spec(info, name)[1]
        extra = int(has_control_widget(name, options)) + sum(bool(options.get(f)) for f in UPLOAD_FLAGS)
        slots.append((name, 1 + extra))
    return slots


def types_match(sent: str, wanted: str) -> bool:
    return sent == wanted or "*" in (sent, wanted) or sent in wanted.split(",")


# --- UI -> API ---------------------------------------------------------------------------------


def ui_to_api(workflow: dict, schemas: dict[str, dict]) -> dict[str, dict]:
    """The API-format prompt of a UI-format workflow (virtual and muted nodes left out)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in VIRTUAL_TYPES or node.get("mode", 0) != 0:
            continue
        info = schemas[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        index = 0
        for name, width in widget_slots(info):
            inputs[name] = values[index]
            index += width
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(origin), origin_slot]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


# --- checks ---------------------------------------------------------------------------------------


def check_ui_workflow(workflow: dict, schemas: dict[str, dict]) -> list[str]:
    """Every problem found: unknown node types, broken or mistyped links, widget values that
    do not fit the schema, required inputs left open."""
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        problems.append("duplicate node ids")
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_TYPES:
            continue
        if node["type"] not in schemas:
            problems.append(f"node {node['id']}: unknown type {node['type']!r}")
            continue
        problems += _check_node_widgets(node, schemas[node["type"]])
        problems += _check_node_slots(node, schemas[node["type"]])
    problems += _check_links(workflow, nodes, schemas)
    return problems


def _check_node_widgets(node: dict, info: dict) -> list[str]:
    slots = widget_slots(info)
    values = node.get("widgets_values") or []
    expected = sum(width for _, width in slots)
    if len(values) != expected:
        return [f"node {node['id']} ({node['type']}): {len(values)} widget values, the schema has {expected}"]
    problems, index = [], 0
    for name, width in slots:
        problem = value_problem(name, values[index], *input_spec(info, name))
        if problem:
            problems.append(f"node {node['id']} ({node['type']}).{name}: {problem}")
        index += width
    return problems


def value_problem(name: str, value: Any, kind: str, options: dict) -> str | None:
    """Why a widget value does not fit its input, or None."""
    if kind == "COMBO":
        choices = options.get("options", [])
        if name in FILE_COMBOS:
            return None if isinstance(value, str) and value else f"{value!r} is not a file name"
        return None if value in choices else f"{value!r} is not one of {choices[:8]}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            return f"{value!r} is not an {kind}"
        if "min" in options and value < options["min"]:
            return f"{value} is below the minimum {options['min']}"
        if "max" in options and value > options["max"]:
            return f"{value} is above the maximum {options['max']}"
    return None


def _check_node_slots(node: dict, info: dict) -> list[str]:
    problems = []
    known = set(input_names(info))
    linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
    widgets = set(widget_names(info))
    for slot in node.get("inputs", []):
        if slot["name"] not in known:
            problems.append(f"node {node['id']} ({node['type']}): no input named {slot['name']!r}")
    for name in input_names(info, "required"):
        if name not in linked and name not in widgets:
            problems.append(f"node {node['id']} ({node['type']}): required input {name!r} is not connected")
    outputs = node.get("outputs", [])
    if [o["type"] for o in outputs] != list(info["output"]):
        problems.append(f"node {node['id']} ({node['type']}): outputs {[o['type'] for o in outputs]} "
                        f"differ from the schema's {info['output']}")
    return problems


def _check_links(workflow: dict, nodes: dict, schemas: dict) -> list[str]:
    problems, seen = [], set()
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        where = f"link {link_id}"
        if link_id in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(link_id)
        if origin not in nodes or target not in nodes:
            problems.append(f"{where}: joins missing nodes {origin} -> {target}")
            continue
        outputs, inputs = nodes[origin].get("outputs", []), nodes[target].get("inputs", [])
        if origin_slot >= len(outputs) or target_slot >= len(inputs):
            problems.append(f"{where}: slot out of range")
            continue
        if link_id not in (outputs[origin_slot].get("links") or []) or inputs[target_slot].get("link") != link_id:
            problems.append(f"{where}: not recorded on both ends")
        sent = outputs[origin_slot]["type"]
        target_schema = schemas.get(nodes[target]["type"])
        if target_schema is None:
            continue
        spec = input_spec(target_schema, inputs[target_slot]["name"])
        if spec is None:
            continue
        if not types_match(sent, spec[0]) or kind != sent:
            problems.append(f"{where}: {sent} into {nodes[target]['type']}.{inputs[target_slot]['name']} ({spec[0]})")
    return problems


def check_api_workflow(prompt: dict, schemas: dict[str, dict]) -> list[str]:
    """Every problem of an API-format prompt: unknown types, missing inputs, bad links and values."""
    problems = []
    for node_id, entry in prompt.items():
        info = schemas.get(entry["class_type"])
        if info is None:
            problems.append(f"{node_id}: unknown type {entry['class_type']!r}")
            continue
        for name in input_names(info, "required"):
            if name not in entry["inputs"]:
                problems.append(f"{node_id} ({entry['class_type']}): required input {name!r} missing")
        for name, value in entry["inputs"].items():
            spec = input_spec(info, name)
            if spec is None:
                problems.append(f"{node_id} ({entry['class_type']}): no input named {name!r}")
            elif isinstance(value, list):
                problems += _api_link_problem(prompt, schemas, node_id, name, value, spec[0])
            elif spec[0] in WIDGET_TYPES:
                problem = value_problem(name, value, *spec)
                if problem:
                    problems.append(f"{node_id} ({entry['class_type']}).{name}: {problem}")
    return problems


def _api_link_problem(prompt, schemas, node_id, name, value, wanted) -> list[str]:
    origin, slot = value
    if origin not in prompt:
        return [f"{node_id}.{name}: links to missing node {origin}"]
    outputs = schemas[prompt[origin]["class_type"]]["output"]
    if slot >= len(outputs):
        return [f"{node_id}.{name}: output {slot} of {origin} does not exist"]
    if not types_match(outputs[slot], wanted):
        return [f"{node_id}.{name}: {outputs[slot]} into an input of type {wanted}"]
    return []
