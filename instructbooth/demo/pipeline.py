"""The embedded demo as one function: personalize, show the overfitting, RL, report.

`run_demo(config, out_dir)` runs the InstructBooth method end to end on the demo model
(model.py) and its world of coloured shapes, on a CPU:

1. the subject's reference photos (subject.py) are written to `out_dir/reference/`,
   each PNG with its caption ("sks toy on a white background") beside it;
2. the base model is scored on the instruction prompts' world captions
   ("two red circles on a black background");
3. DreamBooth: a LoRA learns the subject from the photos (personalize.py);
4. the personalized model is scored on the same instructions with the identifier
   ("sks toy next to two red circles on a black background"): the overfitting shows as
   lower alignment than the base model had;
5. InstructBooth: RL (DDPO, rl/) maximises the exact alignment reward (checker.py) on
   training prompts with and without the identifier, mixed at `rl.identifier_ratio`;
6. the result is scored the same way, and report.py writes report.md and report.html
   with before/after grids, the reward curve and the numbers (also demo_metrics.json).

Alignment is the share of a prompt's instruction attributes (count, colour, shape,
background) that the checker reads back from an image; subject fidelity is the checker's
likeness of the striped diamond in it (0..1). Scores are over every training scene (72)
and every held-out scene (36), whose colour-shape pairs the base model never saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..components import SDComponents
from ..files import write_json
from ..images import tensor_to_pil
from ..lora import lora_merged, save_lora
from ..personalize import PersonalizeResult, personalize
from ..prompts import RLPrompts, Subject
from ..rl.trainer import RLResult, train_rl
from ..sampling import sample_images
from ..training import StepReport
from .evaluate import ALONE, Evaluation, evaluate_model
from .instructions import HEADLINE, DemoReward, instruction_specs, layout_prompt
from .model import DemoModelConfig, build_demo_components, load_demo_components
from .pretrain import load_plain_checkpoint
from .prompts import CLASS_NOUN, DESCRIPTION, IDENTIFIER, PromptSpec, parse_prompt, subject_phrase
from .resume import PERSONALIZE_DIR, RL_DIR, prepare_run_folder
from .settings import CLASS_KINDS, RANDOM_WEIGHTS, DemoConfig
from .subject import reference_images
from .world import BACKGROUNDS

Log = Callable[[str], None]


@dataclass
class DemoReport:
    out_dir: Path
    metrics: dict  # what demo_metrics.json holds (see `run_demo`)
    markdown: Path  # report.md
    html: Path  # report.html
    seconds: float  # wall time of the whole run


# --- the model and the subject ----------------------------------------------------------------


def load_model(weights: str | Path | None = None, seed: int = 0) -> SDComponents:
    """The demo model: shipped (None), a folder with demo_model.*, a pretraining checkpoint
    file (its EMA weights), or RANDOM_WEIGHTS (untrained, seeded); with `stochastic_last_step`."""
    path = Path(weights) if weights not in (None, RANDOM_WEIGHTS) else None
    if weights == RANDOM_WEIGHTS:
        components = build_demo_components(seed=seed)
    elif path is not None and path.is_file():
        components = _from_pretraining_checkpoint(path)
    else:
        components = load_demo_components(path)
    return stochastic_last_step(components)


def stochastic_last_step(components: SDComponents) -> SDComponents:
    """Gives the components the DDIM scheduler RL needs: every step stochastic, no x0 clamp.

    - The demo model's schedule uses "trailing" spacing, so a sampler's last step goes from
      t = 1000/S - 1 to "t = -1", where DDIM's default (`set_alpha_to_one`) makes the step
      deterministic: its standard deviation is 0 and DDPO's log-probability of it is NaN.
      `set_alpha_to_one=False` ends it at alpha-bar of t = 0 (0.99915), as SD1.5's does.
    - `clip_sample` clamps the predicted x0 to [-1, 1]; early in sampling 20-60% of it is
      clamped, which zeroes the policy gradient there. Samples score the same without it
      (alignment 0.70 vs 0.71 at 10 steps, measured), so it is off.
    Training reads the same betas, so nothing else changes."""
    config = dict(components.scheduler.config)
    components.scheduler = DDIMScheduler.from_config(config, set_alpha_to_one=False, clip_sample=False)
    return components


def _from_pretraining_checkpoint(path: Path, model: DemoModelConfig = DemoModelConfig()) -> SDComponents:
    """The EMA weights of a pretraining checkpoint (made with the `model` architecture and
    schedule: a checkpoint does not record them)."""
    saved = load_plain_checkpoint(path)
    if "ema" not in saved or "modules" not in saved:
        raise ValueError(f"{path} is not a demo pretraining checkpoint (no 'ema' / 'modules' entries)")
    components = build_demo_components(model)
    params = [p for m in (components.unet, components.text_encoder) for p in m.parameters()]
    shadow = saved["ema"]["shadow"]
    if len(shadow) != len(params) or any(a.shape != b.shape for a, b in zip(params, shadow)):
        raise ValueError(f"the EMA weights in {path} do not fit the default demo model architecture")
    with torch.no_grad():
        for param, value in zip(params, shadow):
            param.copy_(value)
    return components


def subject_of(detailed: bool, layout: str = "after") -> Subject:
    """The RL subject. "after": the description rides on identifier prompts only ("... next to
    sks toy, with pink and cyan stripes"; plain prompts end "next to a toy"). "before": it goes
    into the class phrase, where demo/prompts.py's grammar has it ("sks toy with pink and cyan
    stripes next to ...", "a toy with pink and cyan stripes next to ...")."""
    if layout == "after":
        return Subject(IDENTIFIER, CLASS_NOUN, DESCRIPTION if detailed else "")
    return Subject(IDENTIFIER, f"{CLASS_NOUN} {DESCRIPTION}" if detailed else CLASS_NOUN)


def write_reference(folder: Path, count: int, seed: int, detailed: bool, layout: str = "after") -> torch.Tensor:
    """The subject's photos as PNGs with their captions beside them; returns [N, 3, 32, 32]."""
    images, captions = reference_images(count, seed, detailed)
    captions = [layout_prompt(parse_prompt(c), layout) for c in captions]
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("subject_*"):
        old.unlink()
    for i, (image, caption) in enumerate(zip(images, captions)):
        tensor_to_pil(torch.from_numpy(image)).save(folder / f"subject_{i}.png")
        (folder / f"subject_{i}.txt").write_text(caption + "\n", encoding="utf-8")
    return torch.from_numpy(images)




# --- the two training stages -----------------------------------------------------------------


def class_specs(count: int, seed: int, kind: str = "toy") -> list[PromptSpec]:
    """`count` prior-preservation prompts drawn with `seed`: DreamBooth's class form ("toy": "a toy"
    next to a training scene, or alone) or the training scenes ("scenes": "two red circles on a
    black background")."""
    if kind not in CLASS_KINDS:
        raise ValueError(f"unknown class image kind {kind!r}; expected one of {CLASS_KINDS}")
    pool = [] if kind == "scenes" else [PromptSpec(background=b, subject="class") for b in BACKGROUNDS]
    pool += instruction_specs("train", None if kind == "scenes" else "class", detailed=False)
    picks = np.random.default_rng(seed + 7).permutation(len(pool))[:count]
    return [pool[i] for i in sorted(picks)]


def write_class_images(components: SDComponents, folder: Path, config: DemoConfig) -> None:
    """The prior-preservation images: the model as it is (no LoRA) on `config.class_kind` prompts,
    sampled as the evaluation samples, each PNG with its caption beside it (its prompt in the loss)."""
    specs = class_specs(config.class_images, config.seed, config.class_kind)
    prompts = [layout_prompt(s, config.layout) for s in specs]
    seeds = [config.seed * 1_000_003 + 500_000 + i for i in range(len(prompts))]
    images = sample_images(components, prompts, seeds, config.evaluation.settings()).cpu()
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("class_*"):
        old.unlink()
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        tensor_to_pil(image).save(folder / f"class_{i}.png")
        (folder / f"class_{i}.txt").write_text(prompt + "\n", encoding="utf-8")


def personalize_subject(components: SDComponents, reference_dir: Path, config: DemoConfig, log: Log,
                        checkpoint_dir: Path | None = None) -> PersonalizeResult:
    """DreamBooth LoRA on the reference photos (captions beside them), progress every ~10%;
    with `config.class_images`, prior preservation on class images in reference_dir/../class."""
    settings = config.personalize_settings()
    every = max(1, settings.steps // 10)

    def progress(report: StepReport) -> None:
        if report.stage == "class_images":
            return
        if report.step % every == 0 or report.step == report.total:
            log(f"personalize step {report.step}/{report.total} loss {report.loss:.4f}")

    class_dir = None
    if config.class_images:
        class_dir = reference_dir.parent / "class"
        write_class_images(components, class_dir, config)
    return personalize(components, reference_dir, settings, callback=progress, class_images=class_dir,
                       checkpoint_dir=checkpoint_dir, resume=True)  # a finished checkpoint there is reused


def rl_prompts(detailed: bool, layout: str = "after") -> RLPrompts:
    """Training templates: the subject alone on each background and next to every training
    scene; held-out: next to every held-out scene ("two blue triangles on ... next to {subject}")."""
    head = subject_phrase("identifier")

    def templates(split: str) -> tuple[str, ...]:
        specs = instruction_specs(split, "identifier", detailed=False)
        if split == "train":
            specs = [PromptSpec(background=b, subject="identifier") for b in BACKGROUNDS] + specs
        return tuple(dict.fromkeys(layout_prompt(s, layout).replace(head, "{subject}", 1) for s in specs))

    return RLPrompts(templates("train"), subject_of(detailed, layout), templates("heldout"))


def instruct(components: SDComponents, lora: Mapping[str, torch.Tensor], reference: torch.Tensor,
             config: DemoConfig, rl_dir: Path, log: Log, resume: bool = False) -> RLResult:
    """InstructBooth's RL stage on top of the personalized LoRA; logs each epoch's rewards.
    `resume` continues from the checkpoints in rl_dir (only for the same demo run: resume.py)."""
    from .checker import subject_fidelity

    settings = config.rl_settings()
    shown = [0]

    def fidelity(images, prompts, metadata):
        return torch.tensor([subject_fidelity(img) for img in images])

    def progress(report: StepReport) -> None:
        shown[0] = log_rl_epochs(rl_dir / "metrics.json", shown[0], settings.epochs, log)

    reward = DemoReward(subject_weight=config.subject_weight)
    result = train_rl(components, reward, rl_prompts(config.detailed, config.layout), settings, callback=progress,
                      checkpoint_dir=rl_dir, resume=resume, base_lora=lora, subject_images=reference,
                      subject_measure=fidelity)
    log_rl_epochs(rl_dir / "metrics.json", shown[0], settings.epochs, log)
    return result


def log_rl_epochs(path: Path, shown: int, total: int, log: Log) -> int:
    """Logs the epochs of metrics.json not logged yet; returns how many are logged now."""
    if not path.is_file():
        return shown
    epochs = json.loads(path.read_text())["epochs"]
    for entry in epochs[shown:]:
        groups = " ".join(f"{g} {s['mean']:.3f}" for g, s in entry["reward"].items() if g != "all" and s["count"])
        fidelity = entry.get("subject_measure")
        extra = f", subject fidelity {fidelity:.3f}" if fidelity is not None else ""
        log(f"RL epoch {entry['epoch']}/{total}: reward {groups}{extra} ({entry['time']['total']:.0f} s)")
    return len(epochs)


# --- the whole demo ---------------------------------------------------------------------------


class _Clock:
    """Wall time since the start and per stage; prefixes log lines with the elapsed time."""

    def __init__(self, callback: Log | None):
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}
        self.callback = callback

    def log(self, message: str) -> None:
        if self.callback is not None:
            self.callback(f"[{time.perf_counter() - self.start:6.1f} s] {message}")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.stages[name] = round(time.perf_counter() - began, 2)

    def total(self) -> float:
        return time.perf_counter() - self.start


def run_demo(config: DemoConfig = DemoConfig(), out_dir: str | Path = "instructbooth_demo",
             callback: Log | None = None) -> DemoReport:
    """Runs the demo into `out_dir` and writes its report; `callback` gets progress lines.

    out_dir ends up with reference/ (the photos), dreambooth.safetensors and
    instructbooth.safetensors (LoRA files for ComfyUI's LoraLoader), personalize/ and rl/
    (checkpoints; rl/ also metrics.json, reward_curve.png), grid_*.png, demo_metrics.json,
    report.md, report.html and demo_run.json. Run again into the same folder with the same
    settings, it resumes (an interrupted run continues; a finished one only re-evaluates).
    """
    from .report import write_report

    out = Path(out_dir)
    resuming = prepare_run_folder(out, json.loads(json.dumps(asdict(config), default=str)), config.weights)
    clock = _Clock(callback)
    if resuming:
        clock.log(f"resuming the run in {out} (same settings and model); finished stages are reused")
    with clock.stage("load"):
        components = load_model(config.weights, config.seed)
        reference = write_reference(out / "reference", config.reference_images, config.seed, config.detailed,
                                    config.layout)
    clock.log(f"model loaded ({_weights_name(config.weights)}); {len(reference)} reference photos in {out / 'reference'}")
    evaluations = {}
    with clock.stage("evaluate base"):
        evaluations["base"] = evaluate_model(components, None, config)
    clock.log("base model: " + _summary_line(evaluations["base"]))
    with clock.stage("personalize"):
        dreambooth = personalize_subject(components, out / "reference", config, clock.log, out / PERSONALIZE_DIR)
    save_lora(out / "dreambooth.safetensors", dreambooth.lora_state, dreambooth.metadata)
    with clock.stage("evaluate dreambooth"), lora_merged(components, dreambooth.lora_state):
        evaluations["dreambooth"] = evaluate_model(components, "identifier", config)
    clock.log("DreamBooth: " + _summary_line(evaluations["dreambooth"]))
    with clock.stage("rl"):
        rl = instruct(components, dreambooth.lora_state, reference, config, out / RL_DIR, clock.log, resume=resuming)
    save_lora(out / "instructbooth.safetensors", rl.lora_state, rl.metadata)
    with clock.stage("evaluate instructbooth"), lora_merged(components, rl.lora_state):
        evaluations["instructbooth"] = evaluate_model(components, "identifier", config)
    clock.log("InstructBooth: " + _summary_line(evaluations["instructbooth"]))
    metrics = demo_metrics(config, evaluations, dreambooth, rl, clock)
    markdown, html = write_report(out, metrics, evaluations, reference, config.showcase)
    write_json(out / "demo_metrics.json", metrics)
    clock.log(f"report written: {markdown} and {html}")
    return DemoReport(out, metrics, markdown, html, clock.total())


def demo_metrics(config: DemoConfig, evaluations: dict[str, dict[str, Evaluation]], dreambooth: PersonalizeResult,
                 rl: RLResult, clock: _Clock) -> dict:
    """Everything the report states, as plain JSON data."""
    models = {name: {split: ev.summary() for split, ev in evals.items()} for name, evals in evaluations.items()}
    prompts = {name: {split: list(dict.fromkeys(ev.prompts))[:3] for split, ev in evals.items()}
               for name, evals in evaluations.items()}
    return {
        "models": models,
        "example_prompts": prompts,
        "personalize": {"steps": dreambooth.steps_done, "loss_first": dreambooth.loss_history[0],
                        "loss_last": float(np.mean(dreambooth.loss_history[-10:]))},
        "rl": {"epochs": rl.epochs_done, "stop_reason": rl.stop_reason, "history": rl.metrics},
        "config": config.to_dict(),
        "time": {"stages": dict(clock.stages), "total": round(clock.total(), 1)},
        "machine": machine_record(),
    }


def machine_record() -> dict:
    """CPU count, torch threads and the load average (the demo's time depends on them)."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": load}


def _weights_name(weights: str | None) -> str:
    return "shipped weights" if weights is None else str(weights)


def _summary_line(evaluations: dict[str, Evaluation]) -> str:
    parts = []
    for split, evaluation in evaluations.items():
        s = evaluation.summary()
        if split == ALONE:
            parts.append(f"subject alone: {s['subject_count']} of {s['images']} images show it")
        elif s["subject_count"]:
            parts.append(f"{split} subject-conditional alignment {s[HEADLINE]:.3f} ({s['subject_exact_count']} of "
                         f"{s['images']} images: subject, every attribute right), alignment {s['alignment']:.3f}, "
                         f"fidelity {s['fidelity']:.3f}")
        else:
            parts.append(f"{split} alignment {s['alignment']:.3f} fidelity {s['fidelity']:.3f}")
    return "; ".join(parts)
