"""The pack in a real ComfyUI server (COMFYUI_PATH, v0.8.0, --cpu, 127.0.0.1).

One server for the module, in a temporary --base-directory with the pack linked into its
custom_nodes. Made at test time: a small SD1.5-shaped checkpoint (one 320-channel UNet level,
the 12-layer CLIP ComfyUI builds for SD1.5, the full VAE), a tiny ImageReward file, a tiny
ControlNet built by ComfyUI's own ControlNet class for that checkpoint, and subject photos.
Each API-format workflow copy runs with tiny settings (64 px, 2-3 steps) overriding the
shipped ones. Skipped with a reason when COMFYUI_PATH is unset or ComfyUI's Python lacks the
pack's requirements.

Run: COMFYUI_PATH=/work/comfyui pytest tests/test_comfyui_server.py
"""

from __future__ import annotations

import json
import os
import urllib.parse
import subprocess
import time
from pathlib import Path

import comfyui_server
import pytest
import torch
from nodes_harness import loaded_pack, schema_info
from workflow_graphs import CORE_SNAPSHOT, TITLES, api_path, input_names, input_spec, load_json
from workflow_graphs import workflow_path

NODE_IDS = ["InstructBoothPersonalize", "InstructBoothImageRewardLoader", "InstructBoothImageRewardScore",
            "InstructBoothBestOfN", "InstructBoothRLFineTune", "InstructBoothPreferencePairs", "InstructBoothDPO",
            "InstructBoothLoadLoRA", "InstructBoothEvaluationModelLoader", "InstructBoothEvaluate",
            "InstructBoothSaveFeedback", "InstructBoothLoadFeedback", "InstructBoothLearnReward",
            "InstructBoothLearnedRewardLoader"]
CHECKPOINT, REWARD, CONTROLNET = "sd15_small.safetensors", "tiny.safetensors", "tiny_controlnet.safetensors"
SUBJECT = "instructbooth_subject"
TINY_PERSONALIZE = dict(steps=3, resolution=64, mixed_precision="no", gradient_checkpointing=False, preview_every=0,
                        checkpoint_every=0, lora_name="instructbooth/test_sks")
TINY_RL = dict(epochs=2, sample_steps=2, resolution=64, sample_batch_size=2, sample_batches=1, train_batch_size=2,
               images_per_prompt=2, gradient_accumulation_steps=1,
               mixed_precision="no", gradient_checkpointing=False, lora_name="instructbooth/test_sks_rl")
TINY_SAMPLING = {"KSampler": dict(steps=2), "EmptyLatentImage": dict(width=64, height=64),
                 "CheckpointLoaderSimple": dict(ckpt_name=CHECKPOINT),
                 "InstructBoothImageRewardLoader": dict(reward_file=REWARD)}


def _requirements_problem() -> str | None:
    reason = comfyui_server.skip_reason()
    if reason:
        return reason
    done = subprocess.run([comfyui_server.comfyui_python(), "-c", "import diffusers, transformers, safetensors"],
                          capture_output=True, text=True)
    if done.returncode:
        return ("ComfyUI's Python cannot import the pack's requirements (pip install -r requirements.txt into "
                f"ComfyUI's environment): {done.stderr.strip().splitlines()[-1]}")
    return None


pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(_requirements_problem() is not None,
                                                      reason=_requirements_problem() or "")]


# --- test-time files and the server -----------------------------------------------------------


def build_checkpoint(path: Path) -> None:
    from instructbooth.checkpoint import save_checkpoint
    from instructbooth.components import build_components, small_sd15_configs

    unet, vae, text = small_sd15_configs()
    text.update(num_hidden_layers=12)  # ComfyUI builds SD1.5's CLIP with 12 layers whatever the file holds
    save_checkpoint(build_components(unet, vae, text, seed=0), path, dtype=torch.float16)


def build_image_reward(path: Path, fixtures: Path) -> None:
    from instructbooth.rewards import ImageRewardConfig, convert_to_safetensors

    folder = fixtures / "imagereward_tiny"
    convert_to_safetensors(folder / "tiny_imagereward.safetensors", path, ImageRewardConfig.from_json(folder / "config.json"))


CONTROLNET_SNIPPET = """
import comfy.cldm.cldm, comfy.controlnet, comfy.ops, comfy.sd
model = comfy.sd.load_checkpoint_guess_config(str(WORKDIR / "%(checkpoint)s"), output_vae=False, output_clip=False)[0]
config = {k: v for k, v in model.model.model_config.unet_config.items() if k != "out_channels"}
config["dtype"] = torch.float32
net = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, device="cpu", **config)
generator = torch.Generator().manual_seed(0)
with torch.no_grad():
    for parameter in net.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WORKDIR / "%(controlnet)s"))
RESULT["loaded_as"] = type(comfy.controlnet.load_controlnet(str(WORKDIR / "%(controlnet)s"))).__name__
"""


def build_controlnet(models: Path, workdir: Path) -> str:
    """A ControlNet for the small checkpoint, made by ComfyUI's own ControlNet class."""
    from comfyui_env import run_in_comfyui

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CHECKPOINT).symlink_to(models / "checkpoints" / CHECKPOINT)
    run = run_in_comfyui(CONTROLNET_SNIPPET % {"checkpoint": CHECKPOINT, "controlnet": CONTROLNET}, workdir=workdir)
    (workdir / CONTROLNET).rename(models / "controlnet" / CONTROLNET)
    return run.values["loaded_as"]


def write_photos(folder: Path, count: int = 3) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        picture = Image.new("RGB", (72 + 8 * i, 64), (200, 220 - 40 * i, 255))
        ImageDraw.Draw(picture).ellipse((16, 12, 56, 52), fill=(200 - 50 * i, 60, 40))
        picture.save(folder / f"photo_{i}.png")


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_fixtures):
    root = tmp_path_factory.mktemp("comfyui_base")
    models = root / "models"
    for folder in ("checkpoints", "loras", "ImageReward", "controlnet"):
        (models / folder).mkdir(parents=True)
    began = time.perf_counter()
    build_checkpoint(models / "checkpoints" / CHECKPOINT)
    build_image_reward(models / "ImageReward" / REWARD, shared_fixtures)
    write_photos(root / "input" / SUBJECT)
    write_photos(root / "input", count=1)
    (root / "input" / "photo_0.png").rename(root / "input" / "example.png")
    controlnet_class = build_controlnet(models, root / "controlnet_build")
    print(f"\ntest files made in {time.perf_counter() - began:.1f} s (ControlNet loads as {controlnet_class})")
    return root


@pytest.fixture(scope="module")
def server(base):
    began = time.perf_counter()
    with comfyui_server.ComfyServer(base) as running:
        print(f"ComfyUI started in {time.perf_counter() - began:.1f} s")
        yield running


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    with loaded_pack(tmp_path_factory.mktemp("standin_root")) as pack:
        return {info["name"]: info for info in (schema_info(cls) for cls in pack.nodes.node_classes())}


def workflow(name: str, **by_type: dict) -> dict:
    """The API copy of a shipped workflow with widget values replaced, per node type."""
    prompt = load_json(api_path(workflow_path(name)))
    for changes in (TINY_SAMPLING, by_type):
        for entry in prompt.values():
            for key, value in changes.get(entry["class_type"], {}).items():
                if key in entry["inputs"] and not isinstance(entry["inputs"][key], list):
                    entry["inputs"][key] = value
    return prompt


def run_timed(server, prompt: dict, timeout: float = 420) -> tuple[dict, float]:
    began = time.perf_counter()
    entry = server.run(prompt, timeout=timeout)
    return entry, time.perf_counter() - began


def images_of(entry: dict, class_type: str, prompt: dict) -> list[dict]:
    ids = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    return [image for node_id in ids for image in entry["outputs"].get(node_id, {}).get("images", [])]


def image_size(base: Path, record: dict) -> tuple[int, int]:
    from PIL import Image

    folder = {"output": "output", "temp": "temp"}[record["type"]]
    with Image.open(base / folder / record["subfolder"] / record["filename"]) as picture:
        return picture.size


def run_folder(base: Path, pattern: str) -> Path:
    found = sorted((base / "output" / "instructbooth").glob(pattern))
    assert len(found) == 1, found
    return found[0]


# --- the server, its node list and its templates ----------------------------------------------------


def test_object_info_lists_our_nodes_as_the_stand_ins_declare_them(server, ours):
    info = server.get("/object_info")
    assert [name for name in info if name.startswith("InstructBooth")] == NODE_IDS
    for name in NODE_IDS:
        live, declared = info[name], ours[name]
        assert live["category"] == "InstructBooth" and live["output"] == declared["output"]
        assert live["output_is_list"] == declared["output_is_list"]
        for kind in ("required", "optional"):
            assert live["input_order"].get(kind) == declared["input_order"].get(kind), f"{name} {kind}"
        for field in input_names(declared):
            live_type, live_options = input_spec(live, field)
            declared_type, declared_options = input_spec(declared, field)
            assert live_type == declared_type, f"{name}.{field}"
            for key in ("default", "min", "max", "tooltip"):
                assert live_options.get(key) == declared_options.get(key), f"{name}.{field}.{key}"
            assert bool(live_options.get("multiline")) == bool(declared_options.get("multiline")), f"{name}.{field}"


def test_feedback_nodes_are_listed_and_save_a_labelled_batch(server, base):
    info = server.get("/object_info")
    assert info["InstructBoothLearnReward"]["output"] == ["IMAGE_REWARD", "STRING"]
    assert info["InstructBoothLoadFeedback"]["output"] == ["INSTRUCTBOOTH_FEEDBACK", "STRING"]
    assert info["InstructBoothLearnedRewardLoader"]["output"] == ["IMAGE_REWARD"]
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 3, "color": 255}},
              "2": {"class_type": "InstructBoothSaveFeedback",
                    "inputs": {"images": ["1", 0], "prompt": "a blue square", "labels": "gbs", "folder": "fb_server"}}}
    server.run(prompt, timeout=60)
    folder = base / "output" / "fb_server"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*")) == [
        "bad/00002.png", "bad/00002.txt", "good/00001.png", "good/00001.txt"]
    assert (folder / "good" / "00001.txt").read_text() == "a blue square\n"


def test_the_log_shows_the_pack_imported_without_errors(server):
    """The pack's own lines only: ComfyUI core may fail to import its own optional nodes (its
    audio nodes without torchaudio), which is not this pack's doing."""
    log = server.log()
    lines = [line for line in log.splitlines() if comfyui_server.PACK_NAME in line]
    assert lines and not any("IMPORT FAILED" in line for line in lines)
    ours = [block for block in _error_blocks(log) if comfyui_server.PACK_NAME in block or "instructbooth" in block]
    assert not ours, ours[0]


def _error_blocks(log: str) -> list[str]:
    """Each traceback (up to the first unindented line after it) and each 'Cannot import' line."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback"):
            current = [line]
        elif current is not None and (line.startswith((" ", "\t")) or not line.strip()):
            current.append(line)
        elif current is not None:
            current.append(line)  # the exception line
            blocks.append("\n".join(current))
            current = None
        if "Cannot import" in line:
            blocks.append(line)
    return blocks + (["\n".join(current)] if current else [])


def test_the_core_node_snapshot_matches_this_comfyui(server):
    info = server.get("/object_info")
    for name, snapshot in load_json(CORE_SNAPSHOT).items():
        if name.startswith("_"):
            continue
        assert info[name]["input_order"] == snapshot["input_order"], name
        assert info[name]["output"] == snapshot["output"], name
        for field in input_names(snapshot):
            assert input_spec(info[name], field)[0] == input_spec(snapshot, field)[0], f"{name}.{field}"


def test_workflows_are_served_as_templates(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates[comfyui_server.PACK_NAME]) == sorted(TITLES.values())  # each card shows its name
    for key in TITLES:  # as the frontend fetches it (spaces in the name, percent-encoded by the browser)
        served = server.get(f"/api/workflow_templates/{comfyui_server.PACK_NAME}/"
                            f"{urllib.parse.quote(TITLES[key])}.json")
        assert served == load_json(workflow_path(key))


# --- the workflows ---------------------------------------------------------------------------------


def test_personalize_workflow_trains_saves_a_lora_and_samples_with_it(server, base):
    prompt = workflow("personalize", InstructBoothPersonalize=TINY_PERSONALIZE)
    entry, seconds = run_timed(server, prompt)
    print(f"personalize workflow: {seconds:.1f} s")
    saved = images_of(entry, "SaveImage", prompt)
    assert len(saved) == 4 and {image_size(base, s) for s in saved} == {(64, 64)}
    assert len(images_of(entry, "LossGraphNode", prompt)) == 1
    assert (base / "models" / "loras" / "instructbooth" / "test_sks.safetensors").is_file()
    folder = run_folder(base, "personalize-instructbooth_test_sks-*")
    assert len(json.loads((folder / "result.loss.json").read_text())["loss"]) == 3


def test_instructbooth_full_workflow_reuses_personalize_runs_rl_and_draws_the_grid(server, base):
    # checkpoint_every differs from the test above: ComfyUI's cache runs the node again, while the
    # pack's run key (which leaves out checkpoint and preview settings) finds the finished run
    personalize = dict(TINY_PERSONALIZE, checkpoint_every=1)
    prompt = workflow("instructbooth_full", InstructBoothPersonalize=personalize, InstructBoothRLFineTune=TINY_RL)
    before = server.log()
    entry, seconds = run_timed(server, prompt)
    print(f"instructbooth_full workflow: {seconds:.1f} s")
    new_log = server.log()[len(before):]
    assert "InstructBooth Personalize: reusing the finished run" in new_log  # same settings as the test above
    grid = images_of(entry, "SaveImage", prompt)
    assert len(grid) == 1 and image_size(base, grid[0]) == (64 * 2 + 8, 64 * 2 + 8)
    assert len(images_of(entry, "PreviewImage", prompt)) == 1  # the reward curve
    assert len(images_of(entry, "LossGraphNode", prompt)) == 1  # reward per epoch
    from instructbooth.lora import load_lora

    state, metadata = load_lora(base / "models" / "loras" / "instructbooth" / "test_sks_rl.safetensors")
    assert metadata.method == "ddpo" and metadata.trigger_phrase == "sks plushie"
    assert len(json.loads((run_folder(base, "rl-instructbooth_test_sks_rl-*") / "metrics.json").read_text())["epochs"]) == 2


def test_score_and_rerank_workflow_keeps_the_best_images_and_shows_scores(server, base):
    prompt = workflow("score_and_rerank", EmptyLatentImage=dict(batch_size=4), InstructBoothBestOfN=dict(k=2))
    entry, seconds = run_timed(server, prompt)
    print(f"score_and_rerank workflow: {seconds:.1f} s")
    assert len(images_of(entry, "SaveImage", prompt)) == 2
    assert len(images_of(entry, "PreviewImage", prompt)) == 4
    score_id = next(k for k, v in prompt.items() if v["class_type"] == "InstructBoothImageRewardScore")
    table = entry["outputs"][score_id]["text"][0]
    assert table.splitlines()[1] == "rank  image  score" and len(table.splitlines()) == 2 + 4


def test_controlnet_workflow_uses_the_tuned_lora_with_stock_controlnet_nodes(server, base):
    prompt = workflow("controlnet", InstructBoothLoadLoRA=dict(lora_name="instructbooth/test_sks_rl.safetensors"),
                      ControlNetLoader=dict(control_net_name=CONTROLNET))
    entry, seconds = run_timed(server, prompt)
    print(f"controlnet workflow: {seconds:.1f} s")
    saved = images_of(entry, "SaveImage", prompt)
    assert len(saved) == 1 and image_size(base, saved[0]) == (64, 64)


LORA_SNIPPET = """
import logging
messages = []
class Remember(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger().addHandler(Remember(level=logging.WARNING))
import comfy.sd, comfy.utils
model, clip = comfy.sd.load_checkpoint_guess_config(str(WORKDIR / "%(checkpoint)s"))[:2]
for name in %(loras)r:
    lora = comfy.utils.load_torch_file(str(WORKDIR / name), safe_load=True)
    patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
    RESULT[name] = {"unet": len(patched_model.patches), "clip": len(patched_clip.patcher.patches),
                    "modules": len({k.split(".")[0] for k in lora})}
RESULT["not_loaded"] = [m for m in messages if "lora key not loaded" in m]
"""


def test_the_stock_lora_loader_patches_every_module_of_our_files(server, base, tmp_path):
    from comfyui_env import run_in_comfyui

    names = ["test_sks.safetensors", "test_sks_rl.safetensors"]
    (tmp_path / CHECKPOINT).symlink_to(base / "models" / "checkpoints" / CHECKPOINT)
    for name in names:
        (tmp_path / name).symlink_to(base / "models" / "loras" / "instructbooth" / name)
    result = run_in_comfyui(LORA_SNIPPET % {"checkpoint": CHECKPOINT, "loras": names}, workdir=tmp_path).values
    print(f"ComfyUI patched: {json.dumps({n: result[n] for n in names})}")
    assert result["not_loaded"] == []
    for name in names:
        counts = result[name]
        assert counts["unet"] + counts["clip"] == counts["modules"] == 32  # 4 transformers x 2 attentions x 4


# --- cancel ----------------------------------------------------------------------------------------


def test_interrupt_stops_training_within_a_step_and_leaves_a_loadable_checkpoint(server, base):
    settings = dict(TINY_PERSONALIZE, steps=2000, checkpoint_every=2, lora_name="instructbooth/test_interrupt")
    prompt = workflow("personalize", InstructBoothPersonalize=settings)
    prompt_id = server.queue(prompt)
    checkpoint = _wait_for_checkpoint(base, "personalize-instructbooth_test_interrupt-*", minimum_step=1)
    server.interrupt()
    asked = time.perf_counter()
    entry = server.wait(prompt_id, timeout=120)
    stop_seconds = time.perf_counter() - asked
    print(f"stopped {stop_seconds:.1f} s after POST /interrupt")
    messages = [name for name, _ in entry["status"]["messages"]]
    assert entry["status"]["status_str"] == "error" and "execution_interrupted" in messages
    folder = checkpoint.parent
    newest = sorted(folder.glob("checkpoint-*.pt"))[-1]
    state = torch.load(newest, map_location="cpu", weights_only=True)
    assert 0 < state["step"] < 2000 and len(state["trainable"]) == 96 and len(state["loss_history"]) == state["step"]
    assert not (folder / "result.safetensors").exists()
    assert not (base / "models" / "loras" / "instructbooth" / "test_interrupt.safetensors").exists()

    before = server.log()  # the same settings again: resumes from that checkpoint
    prompt_id = server.queue(prompt)
    _wait_for_checkpoint(base, "personalize-instructbooth_test_interrupt-*", minimum_step=state["step"] + 2)
    server.interrupt()
    server.wait(prompt_id, timeout=120)
    assert "InstructBooth Personalize: resuming from the checkpoints" in server.log()[len(before):]


def _wait_for_checkpoint(base: Path, pattern: str, minimum_step: int, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (base / "output" / "instructbooth").glob(f"{pattern}/checkpoint-*.pt"):
            if int(path.stem.split("-")[1]) >= minimum_step:
                return path
        time.sleep(0.5)
    raise TimeoutError(f"no checkpoint {pattern} at step >= {minimum_step} within {timeout} s")


# --- bad input is refused before anything runs ----------------------------------------------------------


@pytest.mark.parametrize("name, changes, message", [
    ("score_and_rerank", {"InstructBoothImageRewardLoader": dict(reward_file="ImageReward.pt")},
     "no file 'ImageReward.pt' in the ImageReward folder"),
    ("instructbooth_full", {"InstructBoothRLFineTune": dict(prompts="{subject} riding a bicycle\na plushie reading")},
     "prompts without {subject}: 'a plushie reading'"),
    ("personalize", {"InstructBoothPersonalize": dict(lora_name="../../escape")}, "must be a relative name"),
    ("controlnet", {"InstructBoothLoadLoRA": dict(lora_name="../checkpoints/sd15_small.safetensors")},
     "must be a relative name"),
])
def test_bad_input_is_refused_with_a_clear_message(server, name, changes, message):
    answer = submit(server, workflow(name, **changes))
    errors = answer["node_errors"]
    assert any(message in json.dumps(e) for e in errors.values()), json.dumps(answer)[:2000]
    if "prompt_id" in answer:  # ComfyUI runs the outputs that do not depend on the bad node
        server.wait(answer["prompt_id"], timeout=120)


def submit(server, prompt: dict) -> dict:
    """POST /prompt's answer, also when ComfyUI refuses the prompt (HTTP 400)."""
    import urllib.error

    try:
        return server.post("/prompt", {"prompt": prompt, "client_id": server.client_id})
    except urllib.error.HTTPError as error:
        return json.loads(error.read())


# --- a real browser on the real frontend -------------------------------------------------------------


BROWSER = Path(os.environ.get("INSTRUCTBOOTH_BROWSER", "/usr/bin/chromium"))
SHIPPED = ["controlnet", "evaluate", "instructbooth_full", "personalize", "score_and_rerank"]


@pytest.fixture(scope="module")
def page(server):
    """The ComfyUI frontend in headless Chromium (Debian's `chromium`, driven by Playwright)."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for the browser tests")
    if not BROWSER.is_file():
        pytest.skip(f"no browser at {BROWSER} (apt install chromium, or set INSTRUCTBOOTH_BROWSER)")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(BROWSER), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1600, "height": 1000})
        tab.goto(server.url)
        tab.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180_000)
        yield tab
        browser.close()


LOADED_NODES = """() => window.app.graph._nodes.map(n => ({
    id: n.id, type: n.type, title: n.title, registered: !!LiteGraph.registered_node_types[n.type],
    widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value])),
    box: [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]}))"""


def _queued_prompt(tab) -> dict:
    """What the Run button sends: the frontend's own POST /prompt, caught before the server runs it."""
    caught = {}

    def catch(route, request):
        caught["body"] = json.loads(request.post_data)
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"prompt_id": "caught", "number": 0, "node_errors": {}}))

    tab.route("**/prompt", catch)
    try:
        tab.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        tab.wait_for_timeout(500)
    finally:
        tab.unroute("**/prompt")
    return caught["body"]["prompt"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_frontend_loads_each_workflow_as_shipped_and_queues_its_values(page, name):
    """Every node type known, every widget value as in the file (no seed control widget shifting
    them), no node covering another at the sizes the frontend gives them, and the prompt the UI
    queues carries the API copy's values (seed unchanged, preview_every as shipped)."""
    page.evaluate("async (graph) => { await window.app.loadGraphData(graph); }", load_json(workflow_path(name)))
    page.wait_for_timeout(300)
    nodes = page.evaluate(LOADED_NODES)
    api = load_json(api_path(workflow_path(name)))
    assert all(n["registered"] for n in nodes), [n["type"] for n in nodes if not n["registered"]]
    for node in nodes:
        expected = api.get(str(node["id"]), {}).get("inputs", {})
        for widget, value in node["widgets"].items():
            if widget in expected and not isinstance(expected[widget], list):
                assert value == expected[widget], f"{name}: {node['type']}.{widget} = {value!r}"
        if node["type"].startswith("InstructBooth"):
            assert "control_after_generate" not in node["widgets"], node["type"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{name}: {a['title']} overlaps {b['title']}"
    queued = _queued_prompt(page)
    for node_id, entry in api.items():
        sent = {k: v for k, v in queued[node_id]["inputs"].items() if not isinstance(v, list)}
        assert sent == {k: v for k, v in entry["inputs"].items() if not isinstance(v, list)}, (name, entry["class_type"])
