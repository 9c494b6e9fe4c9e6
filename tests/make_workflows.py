"""Writes the example workflows and their pictures (a developer tool, not a test).

    python tests/make_workflows.py                 # workflows/*.json, workflows/api/*.json, pictures
    python tests/make_workflows.py --snapshot F    # refresh tests/data/comfyui_core_nodes.json from a
                                                   # saved GET /object_info of ComfyUI

Each graph is described once below; the UI-format file (loaded by ComfyUI's template browser),
its API-format copy (for tests and headless use) and a picture of the graph (docs/ and the
template thumbnail) are all generated from that description, against the node schemas
(core snapshot + this pack's schemas), so widget order and link types cannot drift.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graphs import (  # noqa: E402
    API_FOLDER,
    CORE_SNAPSHOT,
    UPLOAD_FLAGS,
    WIDGET_TYPES,
    api_path,
    has_control_widget,
    input_names,
    input_spec,
    ui_to_api,
    workflow_path,
    widget_slots,
)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
CHECKPOINT_URL = ("https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                  "v1-5-pruned-emaonly-fp16.safetensors?download=true")
# ComfyUI's Missing Models dialog downloads only .safetensors / .sft files: ImageReward exists only as
# ImageReward.pt, so it has no download entry (the notes and the loader's tooltip say how to get and convert it).
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
CONTROLNET_URL = ("https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                  "control_v11p_sd15_canny_fp16.safetensors?download=true")
SUBJECT_FOLDER = "instructbooth_subject"
NEGATIVE = "blurry, low quality, deformed, watermark, text"
GPU_SETTINGS = {"mixed_precision": "fp16", "gradient_checkpointing": True}  # fits 8 GB GPUs
OUR_WIDTH, CORE_WIDTH = 360, 320
IMAGE_HEIGHT = 300  # nodes that show a picture after a run (previews, plots) keep room for it


def schemas() -> dict[str, dict]:
    """Core snapshot + this pack's node schemas (loaded against the stand-ins)."""
    from nodes_harness import loaded_pack, schema_info

    found = {k: v for k, v in json.loads(CORE_SNAPSHOT.read_text()).items() if not k.startswith("_")}
    with tempfile.TemporaryDirectory() as root, loaded_pack(Path(root)) as pack:
        for cls in pack.nodes.node_classes():
            info = schema_info(cls)
            found[info["name"]] = info
    return found


class Graph:
    """Builds one UI-format workflow: nodes at grid positions, links by input name."""

    def __init__(self, name: str, schemas: dict[str, dict]):
        self.name, self.schemas = name, schemas
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []

    def add(self, kind: str, at: tuple[float, float], widgets: dict | None = None, links: dict | None = None,
            title: str | None = None, height: float | None = None, models: list | None = None) -> int:
        info = self.schemas[kind]
        widgets, links = widgets or {}, links or {}
        unknown = (set(widgets) | set(links)) - set(input_names(info))
        if unknown:
            raise ValueError(f"{kind} has no inputs {sorted(unknown)}")
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": kind, "pos": [at[0], at[1]], "size": [0, 0], "flags": {}, "order": 0,
                "mode": 0, "inputs": [], "outputs": [], "properties": {"Node name for S&R": kind},
                "widgets_values": self._widget_values(info, widgets)}
        if models:
            node["properties"]["models"] = models
        if title:
            node["title"] = title
        for name in input_names(info):
            kind_type, _ = input_spec(info, name)
            if kind_type not in WIDGET_TYPES:
                node["inputs"].append({"name": name, "type": kind_type, "link": None})
            elif name in links:
                node["inputs"].append({"name": name, "type": kind_type, "widget": {"name": name}, "link": None})
        for index, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"])):
            node["outputs"].append({"name": out_name, "type": out_type, "links": [], "slot_index": index})
        self.nodes.append(node)
        for name, (origin, slot) in links.items():
            self.connect(origin, slot, node_id, name)
        node["size"] = [OUR_WIDTH if kind.startswith("InstructBooth") else CORE_WIDTH, height or self._height(node, info)]
        return node_id

    def note(self, text: str, at: tuple[float, float], size: tuple[float, float], title: str = "Note") -> int:
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "MarkdownNote", "pos": list(at), "size": list(size), "flags": {},
                           "order": 0, "mode": 0, "inputs": [], "outputs": [], "title": title, "properties": {},
                           "widgets_values": [text], "color": "#432", "bgcolor": "#653"})
        return node_id

    def group(self, title: str, members: list[int], color: str = "#3f789e") -> None:
        boxes = [self.nodes[i - 1] for i in members]
        left = min(n["pos"][0] for n in boxes) - 20
        top = min(n["pos"][1] for n in boxes) - 60
        right = max(n["pos"][0] + n["size"][0] for n in boxes) + 20
        bottom = max(n["pos"][1] + n["size"][1] for n in boxes) + 20
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [left, top, right - left, bottom - top],
                            "color": color, "font_size": 24, "flags": {}})

    def connect(self, origin: int, slot: int, target: int, name: str) -> None:
        link_id = len(self.links) + 1
        out = self.nodes[origin - 1]["outputs"][slot]
        target_node = self.nodes[target - 1]
        index = next(i for i, s in enumerate(target_node["inputs"]) if s["name"] == name)
        target_node["inputs"][index]["link"] = link_id
        out["links"].append(link_id)
        self.links.append([link_id, origin, slot, target, index, out["type"]])

    def ui(self) -> dict:
        self._order()
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"instructbooth/{self.name}")), "revision": 0,
            "last_node_id": len(self.nodes), "last_link_id": len(self.links),
            "nodes": self.nodes, "links": self.links, "groups": self.groups, "config": {},
            "extra": {"ds": {"scale": 0.55, "offset": [40, 120]}}, "version": 0.4,
        }

    def _widget_values(self, info: dict, given: dict) -> list:
        values = []
        for name, width in widget_slots(info):
            kind_type, options = input_spec(info, name)
            if name in given:
                value = given[name]
            elif "default" in options:
                value = options["default"]
            elif kind_type == "COMBO":
                value = (options.get("options") or [""])[0]
            else:
                value = {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind_type]
            values.append(value)
            if has_control_widget(name, options):
                values.append("fixed")
            values += ["image" for flag in UPLOAD_FLAGS if options.get(flag)]
        return values

    def _height(self, node: dict, info: dict) -> float:
        rows = max(len(node["inputs"]), len(node["outputs"]))
        height = 30 + 22 * rows
        for name, _ in widget_slots(info):
            multiline = input_spec(info, name)[1].get("multiline")
            height += 100 if multiline else 26
        return height

    def _order(self) -> None:
        """Topological execution order, as the frontend stores it."""
        incoming = {n["id"]: {link[1] for link in self.links if link[3] == n["id"]} for n in self.nodes}
        done: list[int] = []
        while len(done) < len(self.nodes):
            ready = [i for i, deps in incoming.items() if i not in done and deps <= set(done)]
            done += sorted(ready)
        for position, node_id in enumerate(done):
            self.nodes[node_id - 1]["order"] = position


# --- the four workflows ------------------------------------------------------------------------


def checkpoint(g: Graph, at) -> int:
    return g.add("CheckpointLoaderSimple", at, {"ckpt_name": CHECKPOINT},
                 models=[{"name": CHECKPOINT, "url": CHECKPOINT_URL, "directory": "checkpoints"}])


def personalize_nodes(g: Graph, ckpt: int) -> tuple[int, int]:
    photos = g.add("LoadImageDataSetFromFolder", (0, 420), {"folder": SUBJECT_FOLDER}, title="Subject photos")
    node = g.add("InstructBoothPersonalize", (380, 120),
                 {"preview_every": 100, **GPU_SETTINGS},
                 {"model": (ckpt, 0), "clip": (ckpt, 1), "vae": (ckpt, 2), "images": (photos, 0)})
    return photos, node


def sample_chain(g: Graph, model: tuple, clip: tuple, vae: tuple, text: str | tuple, negative: int | None, latent: int,
                 x: float, y: float, seed: int = 42, title: str | None = None) -> tuple[int, int, int]:
    links = {"clip": clip, **({"text": text} if isinstance(text, tuple) else {})}
    positive = g.add("CLIPTextEncode", (x, y), {"text": text if isinstance(text, str) else ""}, links,
                     title=title, height=160)
    sampler = g.add("KSampler", (x + 340, y), {"seed": seed, "steps": 25, "cfg": 7.0, "sampler_name": "euler_ancestral"},
                    {"model": model, "positive": (positive, 0), "negative": (negative, 0), "latent_image": (latent, 0)})
    decode = g.add("VAEDecode", (x + 680, y), links={"samples": (sampler, 0), "vae": vae})
    return positive, sampler, decode


def personalize_workflow(s) -> Graph:
    g = Graph("personalize", s)
    ckpt = checkpoint(g, (0, 120))
    photos, personal = personalize_nodes(g, ckpt)
    g.add("LossGraphNode", (800, 120), {"filename_prefix": "instructbooth/personalize_loss"}, {"loss": (personal, 3)},
          height=IMAGE_HEIGHT)
    prompt = g.add("PrimitiveStringMultiline", (800, 460), {"value": "on a wooden table in a sunny garden"},
                   title="Scene")
    text = g.add("StringConcatenate", (800, 660), {"string_a": "", "string_b": "", "delimiter": " "},
                 {"string_a": (personal, 4), "string_b": (prompt, 0)}, title="'<trigger phrase> <scene>'")
    negative = g.add("CLIPTextEncode", (800, 1030), {"text": NEGATIVE}, {"clip": (personal, 1)}, title="Negative",
                     height=120)
    latent = g.add("EmptyLatentImage", (800, 1190), {"width": 512, "height": 512, "batch_size": 4})
    _, _, decode = sample_chain(g, (personal, 0), (personal, 1), (ckpt, 2), (text, 0), negative, latent, 1180, 330)
    g.add("SaveImage", (2200, 330), {"filename_prefix": "instructbooth/personalized"}, {"images": (decode, 0)},
          height=420)
    g.note(PERSONALIZE_NOTE, (0, -330), (760, 330), "How to use")
    g.group("1. Teach the subject", [ckpt, photos, personal])
    return g


def full_workflow(s) -> Graph:
    g = Graph("instructbooth_full", s)
    ckpt = checkpoint(g, (0, 120))
    photos, personal = personalize_nodes(g, ckpt)
    rl = g.add("InstructBoothRLFineTune", (820, 120), GPU_SETTINGS,
               {"model": (ckpt, 0), "clip": (ckpt, 1), "vae": (ckpt, 2), "lora": (personal, 2)})
    reward = g.add("InstructBoothImageRewardLoader", (820, 1300), {"reward_file": "ImageReward.pt"})
    g.connect(reward, 0, rl, "image_reward")
    g.add("LossGraphNode", (1260, 120), {"filename_prefix": "instructbooth/rl_reward"}, {"loss": (rl, 3)},
          title="Plot reward per epoch", height=IMAGE_HEIGHT)
    g.add("PreviewImage", (1260, 460), links={"images": (rl, 4)}, title="Reward curve", height=IMAGE_HEIGHT)
    negative = g.add("CLIPTextEncode", (1260, 800), {"text": NEGATIVE}, {"clip": (rl, 1)}, title="Negative", height=120)
    latent = g.add("EmptyLatentImage", (1260, 960), {"width": 512, "height": 512, "batch_size": 1})
    decoded = []
    for row, prompt in enumerate(UNSEEN_PROMPTS):
        *_, decode = sample_chain(g, (rl, 0), (rl, 1), (ckpt, 2), prompt, negative, latent, 1640, 120 + row * 350,
                                  title=f"Unseen prompt {row + 1}")
        decoded.append(decode)
    top = g.add("ImageStitch", (2760, 120), {"direction": "right", "spacing_width": 8},
                {"image1": (decoded[0], 0), "image2": (decoded[1], 0)})
    bottom = g.add("ImageStitch", (2760, 420), {"direction": "right", "spacing_width": 8},
                   {"image1": (decoded[2], 0), "image2": (decoded[3], 0)})
    grid = g.add("ImageStitch", (2760, 720), {"direction": "down", "spacing_width": 8},
                 {"image1": (top, 0), "image2": (bottom, 0)}, title="2 x 2 grid")
    g.add("SaveImage", (3120, 120), {"filename_prefix": "instructbooth/unseen_prompts_grid"}, {"images": (grid, 0)},
          height=560)
    g.note(FULL_NOTE, (0, -360), (780, 360), "How to use")
    g.group("1. Teach the subject", [ckpt, photos, personal])
    g.group("2. Make it follow instructions (RL)", [reward, rl], color="#a1309b")
    return g


def score_workflow(s) -> Graph:
    g = Graph("score_and_rerank", s)
    ckpt = checkpoint(g, (0, 160))
    prompt = g.add("PrimitiveStringMultiline", (0, 420), {"value": "a red fox reading a book under a tree, storybook "
                                                                    "illustration"}, title="Prompt")
    positive = g.add("CLIPTextEncode", (360, 160), {"text": ""}, {"clip": (ckpt, 1), "text": (prompt, 0)},
                     height=120)
    negative = g.add("CLIPTextEncode", (360, 340), {"text": NEGATIVE}, {"clip": (ckpt, 1)}, title="Negative",
                     height=120)
    latent = g.add("EmptyLatentImage", (360, 520), {"width": 512, "height": 512, "batch_size": 8}, title="N = 8")
    sampler = g.add("KSampler", (720, 160), {"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler_ancestral"},
                    {"model": (ckpt, 0), "positive": (positive, 0), "negative": (negative, 0),
                     "latent_image": (latent, 0)})
    decode = g.add("VAEDecode", (1060, 160), links={"samples": (sampler, 0), "vae": (ckpt, 2)})
    reward = g.add("InstructBoothImageRewardLoader", (720, 640), {"reward_file": "ImageReward.pt"})
    g.add("InstructBoothImageRewardScore", (1100, 640), links={"image_reward": (reward, 0), "images": (decode, 0),
                                                              "prompt": (prompt, 0)}, height=300)
    best = g.add("InstructBoothBestOfN", (1100, 300), {"k": 2}, {"image_reward": (reward, 0), "images": (decode, 0),
                                                                 "prompt": (prompt, 0)})
    g.add("PreviewImage", (1500, 640), links={"images": (decode, 0)}, title="All N candidates", height=360)
    g.add("SaveImage", (1500, 160), {"filename_prefix": "instructbooth/best_of_n"}, {"images": (best, 0)}, height=420)
    g.note(SCORE_NOTE, (0, -200), (700, 260), "How to use")
    return g


def controlnet_workflow(s) -> Graph:
    g = Graph("controlnet", s)
    ckpt = checkpoint(g, (0, 160))
    lora = g.add("InstructBoothLoadLoRA", (360, 160), {"lora_name": "instructbooth/sks_plushie_rl.safetensors"},
                 {"model": (ckpt, 0), "clip": (ckpt, 1)})
    scene = g.add("PrimitiveStringMultiline", (360, 420), {"value": "riding a bicycle down a country road, golden hour"},
                  title="Scene")
    text = g.add("StringConcatenate", (760, 420), {"string_a": "", "string_b": "", "delimiter": " "},
                 {"string_a": (lora, 2), "string_b": (scene, 0)}, title="'<trigger phrase> <scene>'")
    positive = g.add("CLIPTextEncode", (1120, 160), {"text": ""}, {"clip": (lora, 1), "text": (text, 0)}, height=120)
    negative = g.add("CLIPTextEncode", (1120, 340), {"text": NEGATIVE}, {"clip": (lora, 1)}, title="Negative",
                     height=120)
    image = g.add("LoadImage", (0, 640), {"image": "example.png"}, title="Control image", height=340)
    edges = g.add("Canny", (360, 700), {"low_threshold": 0.4, "high_threshold": 0.8}, {"image": (image, 0)})
    net = g.add("ControlNetLoader", (360, 900), {"control_net_name": CONTROLNET},
                models=[{"name": CONTROLNET, "url": CONTROLNET_URL, "directory": "controlnet"}])
    apply = g.add("ControlNetApplyAdvanced", (1120, 560), {"strength": 0.8},
                  {"positive": (positive, 0), "negative": (negative, 0), "control_net": (net, 0),
                   "image": (edges, 0), "vae": (ckpt, 2)})
    latent = g.add("EmptyLatentImage", (1120, 820), {"width": 512, "height": 512, "batch_size": 1})
    sampler = g.add("KSampler", (1480, 160), {"seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler_ancestral"},
                    {"model": (lora, 0), "positive": (apply, 0), "negative": (apply, 1), "latent_image": (latent, 0)})
    decode = g.add("VAEDecode", (1820, 160), links={"samples": (sampler, 0), "vae": (ckpt, 2)})
    g.add("SaveImage", (2160, 160), {"filename_prefix": "instructbooth/controlnet"}, {"images": (decode, 0)},
          height=420)
    g.add("PreviewImage", (760, 780), links={"images": (edges, 0)}, title="Edges", height=IMAGE_HEIGHT)
    g.note(CONTROLNET_NOTE, (0, -200), (700, 280), "How to use")
    return g


EVAL_LORAS = [("DreamBooth", "instructbooth/sks_plushie.safetensors"),
              ("InstructBooth", "instructbooth/sks_plushie_rl.safetensors")]


EVAL_SCENES = [  # held-out scenes (never trained on), each drawn by both LoRAs with the same seeds
    ("riding a horse on a beach", "a plushie riding a horse on a beach"),
    ("playing the violin on a stage", "a plushie playing the violin on a stage"),
]


def evaluate_workflow(s) -> Graph:
    """Two LoRAs draw the same held-out prompts from the same seeds; each LoRA's batch (one block of
    images per prompt) is measured against the subject photos (CLIP-T, CLIP-I, DINO) on its own
    Evaluate node, which shows a row per prompt and the overall means."""
    g = Graph("evaluate", s)
    ckpt = checkpoint(g, (0, 160))
    scenes = [g.add("PrimitiveStringMultiline", (0, 360 + 200 * k), {"value": scene},
                    title=f"Held-out scene {k + 1} (never trained on)") for k, (scene, _) in enumerate(EVAL_SCENES)]
    latent = g.add("EmptyLatentImage", (0, 780), {"width": 512, "height": 512, "batch_size": 4})
    photos = g.add("LoadImageDataSetFromFolder", (0, 1000), {"folder": SUBJECT_FOLDER}, title="Subject photos")
    clip = g.add("InstructBoothEvaluationModelLoader", (0, 1180),
                 {"model_file": "clip-vit-large-patch14/model.safetensors", "kind": "clip"}, title="CLIP (CLIP-T, CLIP-I)")
    dino = g.add("InstructBoothEvaluationModelLoader", (0, 1360),
                 {"model_file": "dino-vits16/model.safetensors", "kind": "dino"}, title="DINO ViT-S/16")
    scored = g.add("PrimitiveStringMultiline", (0, 1540), {"value": "\n".join(text for _, text in EVAL_SCENES)},
                   title="Prompts as scored (no identifier), one per scene")
    members = []
    for row, (name, lora_file) in enumerate(EVAL_LORAS):
        y = 120 + row * 1240
        lora = g.add("InstructBoothLoadLoRA", (400, y), {"lora_name": lora_file}, {"model": (ckpt, 0), "clip": (ckpt, 1)},
                     title=f"{name} LoRA")
        negative = g.add("CLIPTextEncode", (400, y + 960), {"text": NEGATIVE}, {"clip": (lora, 1)}, title="Negative",
                         height=120)
        nodes, decoded = [lora, negative], []
        for k, scene in enumerate(scenes):
            top = y + 540 * k
            text = g.add("StringConcatenate", (400, y + 240 + 340 * k),
                         {"string_a": "", "string_b": "", "delimiter": " "},
                         {"string_a": (lora, 2), "string_b": (scene, 0)}, title="'<trigger phrase> <scene>'")
            positive, sampler, decode = sample_chain(g, (lora, 0), (lora, 1), (ckpt, 2), (text, 0), negative, latent,
                                                     800, top, title=f"{name}: scene {k + 1}")
            nodes += [text, positive, sampler, decode]
            decoded.append(decode)
        batch = g.add("ImageBatch", (1880, y), links={"image1": (decoded[0], 0), "image2": (decoded[1], 0)},
                      title=f"{name}: both scenes")
        measure = g.add("InstructBoothEvaluate", (2220, y), {"label": name},
                        {"images": (batch, 0), "prompts": (scored, 0), "references": (photos, 0),
                         "clip": (clip, 0), "dino": (dino, 0)}, title=f"Evaluate {name}", height=300)
        g.add("PreviewImage", (2620, y), links={"images": (batch, 0)}, title=f"{name} images", height=IMAGE_HEIGHT)
        members.append(nodes + [batch, measure])
    g.note(EVALUATE_NOTE, (0, -400), (760, 400), "How to use")
    g.group("DreamBooth", members[0], color="#3f789e")
    g.group("InstructBooth (DreamBooth + RL)", members[1], color="#a1309b")
    return g


UNSEEN_PROMPTS = [  # from the held-out set: never trained on
    "sks plushie playing the violin on a stage",
    "sks plushie riding a horse on a beach",
    "sks plushie baking a cake in a kitchen",
    "sks plushie sitting on the moon, stars in the sky",
]

PERSONALIZE_NOTE = f"""## Personalize: teach SD1.5 your subject

1. Put 3-10 photos of the subject in `ComfyUI/input/{SUBJECT_FOLDER}/` (any sizes; they are centre-cropped).
2. Pick an SD1.5 checkpoint. Set **identifier** (a rare word, `sks`) and **class_noun** (`plushie`, `dog`, ...).
3. Queue. The LoRA is saved as `models/loras/instructbooth/sks_plushie.safetensors`; the sampler below uses
   the trained model with the prompt `sks plushie on a wooden table ...`.

A re-run with the same inputs reuses the result; a cancelled run resumes from its last checkpoint
(`output/instructbooth/`). `fp16` + gradient checkpointing fit 8 GB GPUs."""

FULL_NOTE = f"""## InstructBooth: personalize, then make the model follow instructions again

1. Photos of the subject in `ComfyUI/input/{SUBJECT_FOLDER}/`; `ImageReward.pt` (huggingface.co/THUDM/ImageReward) in `ComfyUI/models/ImageReward/`.
2. **Personalize** binds the subject to `sks plushie` (a LoRA). Alone it tends to ignore instructions.
3. **RL Fine-Tune** samples the model on action/interaction prompts (with and without the identifier),
   scores them with ImageReward and trains a second LoRA to raise the reward (DDPO). The result is
   ONE LoRA file (`sks_plushie_rl`) that the stock Load LoRA node can apply.
4. The grid shows prompts the RL stage never saw.

RL on a GPU takes a while (epochs x samples); previews stream to the progress bar."""

SCORE_NOTE = """## ImageReward scoring and best-of-N

Generates N = 8 candidates for one prompt, scores each with ImageReward (the table appears on the
Score node) and keeps the best k = 2 (rejection sampling, the baseline of Lee et al. 2023).
Put `ImageReward.pt` (huggingface.co/THUDM/ImageReward; `instructbooth convert` makes a safetensors copy) in `ComfyUI/models/ImageReward/`. Works with any SD1.5 model or LoRA."""

CONTROLNET_NOTE = f"""## The tuned LoRA with ControlNet

Loads the InstructBooth LoRA (its trigger phrase comes from the file) and generates the subject
following the edges of a control image with the stock ControlNet nodes.
Needs `{CONTROLNET}` in `ComfyUI/models/controlnet/` and a LoRA made by the
Personalize or InstructBooth workflow."""

EVALUATE_NOTE = f"""## Evaluate: DreamBooth vs InstructBooth on held-out prompts

Both LoRAs draw the same held-out scenes with the same seeds; each **InstructBooth Evaluate** node shows,
per prompt and overall, CLIP-T (image vs the prompt written without the identifier), CLIP-I and DINO (mean cosine with every
photo in `ComfyUI/input/{SUBJECT_FOLDER}/`). Higher DINO / CLIP-I: the subject survived; higher CLIP-T:
the instruction is followed. Put the weights in `ComfyUI/models/evaluation/` as hub folders
(`clip-vit-large-patch14/`, `dino-vits16/`: config.json + model.safetensors, and CLIP's tokenizer files).
Change a scene and its scored line together to try other held-out prompts (one line per scene, in order);
`instructbooth evaluate` runs whole prompt lists headless."""

WORKFLOWS_BUILT = {
    "personalize": personalize_workflow,
    "instructbooth_full": full_workflow,
    "score_and_rerank": score_workflow,
    "controlnet": controlnet_workflow,
    "evaluate": evaluate_workflow,
}


# --- pictures -------------------------------------------------------------------------------------

TYPE_COLOURS = {"MODEL": (178, 157, 255), "CLIP": (255, 210, 0), "VAE": (255, 106, 106), "IMAGE": (100, 181, 246),
                "LATENT": (255, 150, 200), "CONDITIONING": (255, 160, 60), "STRING": (120, 220, 120),
                "LORA_MODEL": (240, 120, 240), "LOSS_MAP": (200, 200, 120), "IMAGE_REWARD": (90, 220, 220),
                "CONTROL_NET": (0, 214, 163), "INSTRUCTBOOTH_EVALUATION_MODEL": (120, 200, 255)}


def render(workflow: dict, schemas: dict[str, dict], scale: float = 0.32):
    """A picture of the graph: groups, nodes with their slots and widget values, coloured links."""
    from PIL import Image, ImageDraw, ImageFont

    nodes = {n["id"]: n for n in workflow["nodes"]}
    boxes = [(n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes.values()]
    boxes += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2], g["bounding"][1] + g["bounding"][3])
              for g in workflow["groups"]]
    left, top = min(b[0] for b in boxes) - 30, min(b[1] for b in boxes) - 30
    right, bottom = max(b[2] for b in boxes) + 30, max(b[3] for b in boxes) + 30
    image = Image.new("RGB", (int((right - left) * scale), int((bottom - top) * scale)), (32, 32, 32))
    draw = ImageDraw.Draw(image)
    font_path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    try:
        title_font, font = ImageFont.truetype(font_path, max(9, int(30 * scale))), ImageFont.truetype(font_path, max(8, int(24 * scale)))
    except OSError:
        title_font = font = ImageFont.load_default()

    def at(x: float, y: float) -> tuple[float, float]:
        return (x - left) * scale, (y - top) * scale

    for group in workflow["groups"]:
        x, y, w, h = group["bounding"]
        draw.rectangle((*at(x, y), *at(x + w, y + h)), fill=(48, 56, 66), outline=(90, 120, 150))
        draw.text(at(x + 10, y + 8), group["title"], fill=(200, 220, 240), font=title_font)
    for link_id, origin, slot, target, target_slot, kind in workflow["links"]:
        start = _slot_point(nodes[origin], slot, out=True)
        end = _slot_point(nodes[target], target_slot, out=False)
        draw.line([at(*p) for p in _curve(start, end)], fill=TYPE_COLOURS.get(kind, (180, 180, 180)), width=max(1, int(5 * scale)))
    for node in nodes.values():
        labels = [name for name, _ in widget_slots(schemas[node["type"]])] if node["type"] in schemas else []
        _draw_node(draw, node, labels, at, title_font, font)
    return image


def _slot_point(node: dict, index: int, out: bool) -> tuple[float, float]:
    x, y = node["pos"]
    return (x + node["size"][0] if out else x, y + 14 + 22 * index)


def _curve(start, end, steps: int = 24) -> list[tuple[float, float]]:
    (x0, y0), (x3, y3) = start, end
    bend = max(60.0, abs(x3 - x0) * 0.4)
    x1, x2 = x0 + bend, x3 - bend
    points = []
    for i in range(steps + 1):
        t = i / steps
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
        points.append((a * x0 + b * x1 + c * x2 + d * x3, a * y0 + b * y0 + c * y3 + d * y3))
    return points


def _draw_node(draw, node: dict, labels: list[str], at, title_font, font) -> None:
    x, y = node["pos"]
    w, h = node["size"]
    ours = node["type"].startswith("InstructBooth")
    note = node["type"] == "MarkdownNote"
    body = (70, 52, 40) if note else (60, 48, 72) if ours else (53, 53, 53)
    bar = (105, 70, 45) if note else (110, 60, 140) if ours else (40, 40, 40)
    draw.rectangle((*at(x, y - 30), *at(x + w, y + h)), fill=body, outline=(20, 20, 20))
    draw.rectangle((*at(x, y - 30), *at(x + w, y)), fill=bar)
    draw.text(at(x + 10, y - 27), node.get("title") or node["type"], fill=(235, 235, 235), font=title_font)
    if note:
        for row, line in enumerate(node["widgets_values"][0].splitlines()[:int(h // 28)]):
            draw.text(at(x + 10, y + 6 + 28 * row), line.replace("**", "").replace("`", "")[:int(w / 13)],
                      fill=(230, 215, 190), font=font)
        return
    for index, slot in enumerate(node["inputs"]):
        colour = TYPE_COLOURS.get(slot["type"], (180, 180, 180))
        px, py = at(*_slot_point(node, index, out=False))
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        draw.text((px + 6, py - 6), slot["name"], fill=(200, 200, 200), font=font)
    for index, slot in enumerate(node["outputs"]):
        colour = TYPE_COLOURS.get(slot["type"], (180, 180, 180))
        px, py = at(*_slot_point(node, index, out=True))
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        width = draw.textlength(slot["name"], font=font)
        draw.text((px - 6 - width, py - 6), slot["name"], fill=(200, 200, 200), font=font)
    rows = max(len(node["inputs"]), len(node["outputs"]))
    linked = {slot["name"] for slot in node["inputs"] if slot.get("link") is not None}
    values = [v for v in node.get("widgets_values", []) if v not in ("fixed", "image")]
    shown = [(name, value) for name, value in zip(labels, values) if name not in linked]
    for row, (name, value) in enumerate(shown):
        ty = y + 22 * rows + 14 + 24 * row
        if ty > y + h - 20:
            break
        text = f"{name}: {str(value).splitlines()[0] if str(value) else chr(34) * 2}"
        draw.text(at(x + 14, ty), text[:int(w / 11)], fill=(170, 190, 170), font=font)


# --- main ---------------------------------------------------------------------------------------------


def write_all() -> None:
    found = schemas()
    API_FOLDER.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(exist_ok=True)
    for name, build in WORKFLOWS_BUILT.items():
        workflow = build(found).ui()
        workflow_path(name).write_text(json.dumps(workflow, indent=1) + "\n", encoding="utf-8")
        api_path(workflow_path(name)).write_text(json.dumps(ui_to_api(workflow, found), indent=1) + "\n",
                                                 encoding="utf-8")
        picture = render(workflow, found)
        picture.quantize(64).save(DOCS / f"workflow_{name}.png", optimize=True)
        thumbnail = picture.copy()
        thumbnail.thumbnail((640, 640))
        thumbnail.save(workflow_path(name).with_suffix(".jpg"), quality=80)
        print(f"{name}: {len(workflow['nodes'])} nodes, {len(workflow['links'])} links")


def write_snapshot(object_info_path: Path) -> None:
    """Refreshes the core-node snapshot from a saved GET /object_info (same node list as now)."""
    info = json.loads(Path(object_info_path).read_text())
    old = json.loads(CORE_SNAPSHOT.read_text())
    snapshot = {"_source": old["_source"]}
    for name in (k for k in old if not k.startswith("_")):
        entry = {k: info[name][k] for k in old[name] if k in info[name]}
        for kind in entry["input"].values():
            for key, spec in kind.items():
                if key in ("ckpt_name", "lora_name", "control_net_name", "image", "folder"):
                    if isinstance(spec[0], list):
                        spec[0] = []
                    elif len(spec) > 1 and "options" in spec[1]:
                        spec[1]["options"] = []
        snapshot[name] = entry
    CORE_SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, help="a saved GET /object_info to refresh the core snapshot from")
    arguments = parser.parse_args()
    if arguments.snapshot:
        write_snapshot(arguments.snapshot)
    else:
        write_all()
