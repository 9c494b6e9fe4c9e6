"""The example workflows: UI files the template browser loads, their API copies, and schemas.

Core node schemas come from a snapshot of ComfyUI v0.8.0's /object_info (checked against a
live server in test_comfyui_server.py); this pack's schemas from the nodes themselves.
"""

from __future__ import annotations

import json

import pytest
from nodes_harness import schema_info
from workflow_graphs import (
    CORE_SNAPSHOT,
    TITLES,
    VIRTUAL_TYPES,
    WORKFLOWS,
    api_path,
    check_api_workflow,
    check_ui_workflow,
    load_json,
    ui_to_api,
    workflow_path,
    ui_workflow_paths,
    widget_slots,
)

EXPECTED = ["controlnet", "evaluate", "instructbooth_full", "personalize", "score_and_rerank"]


@pytest.fixture(scope="module")
def ours(pack):
    return {cls.define_schema().node_id: cls for cls in pack.nodes.node_classes()}


@pytest.fixture(scope="module")
def schemas(ours):
    core = {k: v for k, v in load_json(CORE_SNAPSHOT).items() if not k.startswith("_")}
    return {**core, **{node_id: schema_info(cls) for node_id, cls in ours.items()}}


def test_the_template_folder_holds_the_shipped_ui_workflows_and_nothing_else():
    assert sorted(p.stem for p in ui_workflow_paths()) == sorted(TITLES[key] for key in EXPECTED)
    for title in TITLES.values():  # the frontend fetches /api/workflow_templates/<pack>/<name>.json: no URL specials
        assert not set(title) & set("#?%/\\&+") and len(title) < 80, title
    for path in ui_workflow_paths():  # ComfyUI lists every workflows/*.json as a template
        workflow = load_json(path)
        assert workflow.get("version") == 0.4 and isinstance(workflow["nodes"], list), path.name
        assert (WORKFLOWS / f"{path.stem}.jpg").is_file(), f"no template thumbnail for {path.name}"


@pytest.mark.parametrize("name", EXPECTED)
def test_ui_workflow_uses_known_nodes_with_fitting_links_and_widget_values(name, schemas):
    workflow = load_json(workflow_path(name))
    types = {node["type"] for node in workflow["nodes"]}
    assert types <= set(schemas) | VIRTUAL_TYPES
    assert check_ui_workflow(workflow, schemas) == []


@pytest.mark.parametrize("name", EXPECTED)
def test_api_copy_is_the_ui_workflow_converted_and_is_valid(name, schemas):
    path = workflow_path(name)
    api = load_json(api_path(path))
    assert api == ui_to_api(load_json(path), schemas)
    assert check_api_workflow(api, schemas) == []


@pytest.mark.parametrize("name", EXPECTED)
def test_our_nodes_accept_the_shipped_settings(name, ours):
    """Our validate_inputs (prompts with {subject}, safe file names, identifiers) pass on the shipped values."""
    for node_id, entry in load_json(api_path(workflow_path(name))).items():
        cls = ours.get(entry["class_type"])
        if cls is None or "validate_inputs" not in vars(cls):
            continue
        wanted = cls.validate_inputs.__code__.co_varnames[1:cls.validate_inputs.__code__.co_argcount]
        values = {k: entry["inputs"][k] for k in wanted}
        if cls.define_schema().is_input_list:
            values = {k: [v] for k, v in values.items()}
        if entry["class_type"] == "InstructBoothImageRewardLoader":
            continue  # needs ImageReward.pt installed; checked in test_nodes.py
        if entry["class_type"] == "InstructBoothLoadLoRA":
            continue  # needs the LoRA the other workflows make; run in test_comfyui_server.py
        if entry["class_type"] == "InstructBoothEvaluationModelLoader":
            continue  # needs CLIP / DINO weights installed; checked in test_evaluation_nodes.py
        assert cls.validate_inputs(**values) is True, f"{name} node {node_id}"


def test_rl_uses_prompts_with_the_identifier_and_the_grid_prompts_are_unseen():
    from workflow_graphs import REPO

    api = load_json(api_path(workflow_path("instructbooth_full")))
    texts = [e["inputs"]["text"] for e in api.values() if e["class_type"] == "CLIPTextEncode"
             and e.get("_meta", {}).get("title", "").startswith("Unseen")]
    assert len(texts) == 4
    trained = set()
    for name in ("actions", "interactions"):
        for line in (REPO / "instructbooth" / "prompts" / f"{name}.txt").read_text().splitlines():
            if line and not line.startswith("#"):
                trained.add(line.replace("{subject}", "sks plushie"))
    assert not any(text.split(",")[0] in trained for text in texts)


def test_every_widget_of_our_nodes_has_a_single_value_slot(schemas, ours):
    """Our seeds have no control_after_generate and no uploads: one widgets_values entry per widget,
    so values stay aligned when a user re-saves a workflow."""
    for node_id in ours:
        assert all(width == 1 for _, width in widget_slots(schemas[node_id])), node_id


def test_the_core_snapshot_covers_every_core_node_the_workflows_use(schemas):
    snapshot = json.loads(CORE_SNAPSHOT.read_text())
    used = {node["type"] for path in ui_workflow_paths() for node in load_json(path)["nodes"]}
    core = used - VIRTUAL_TYPES - {k for k in schemas if k.startswith("InstructBooth")}
    assert core <= set(snapshot)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_model_entry_is_one_the_frontends_dialog_can_download(name):
    """ComfyUI's Missing Models dialog refuses anything but .safetensors / .sft ("Only allowed
    suffixes are ..."); each entry must name the file its node's widget asks for."""
    entries = 0
    for node in load_json(workflow_path(name))["nodes"]:
        for model in node.get("properties", {}).get("models", []):
            entries += 1
            assert model["name"].endswith((".safetensors", ".sft")), (name, model["name"])
            assert model["url"].startswith("https://huggingface.co/") and model["name"] in model["url"]
            assert model["name"] in node["widgets_values"], (name, node["type"])
    assert entries >= 1  # at least the SD1.5 checkpoint


TITLE_BAR = 30  # the frontend draws a node's title above its position


@pytest.mark.parametrize("name", EXPECTED)
def test_no_two_nodes_overlap_and_picture_nodes_have_room(name):
    """Nodes are boxes [x, y - title, x + w, y + h]; none may cover another (the string-join node
    used to hide the Negative prompt and the Edges preview). Nodes that show a picture after a
    run (previews, plots, saves) keep at least 300 px for it, so it does not draw over neighbours."""
    nodes = load_json(workflow_path(name))["nodes"]
    boxes = [(n.get("title") or n["type"], n["pos"][0], n["pos"][1] - TITLE_BAR, n["pos"][0] + n["size"][0],
              n["pos"][1] + n["size"][1]) for n in nodes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, f"{name}: {a[0]} overlaps {b[0]}"
    for node in nodes:
        if node["type"] in ("PreviewImage", "SaveImage", "LossGraphNode"):
            assert node["size"][1] >= 300, (name, node.get("title") or node["type"])
