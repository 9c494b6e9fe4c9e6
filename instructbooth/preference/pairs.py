"""Preference pairs from the current model, judged by a reward, stored on disk and resumable.

For each prompt of the sampled analogous prompt pairs (see `taxonomy`), the model draws
K images; the judge (ImageReward or any reward of `rewards.base.RewardFn`) scores them
under the prompt. Two kinds of pairs are kept:

- "self": the prompt's best image beats its worst one, when the judge's margin is clear.
- "cross" (InstructEngine's cross-validation pairs): for analogous prompts p and p'
  (differing in one attribute, "red" / "blue"), let x_p be p's best image and x_p' be
  p''s. Under p, x_p is the winner and x_p' the loser; under p', the other way round. A
  direction is kept when the judge agrees with a clear margin, r(x_p | p) - r(x_p' | p)
  >= min_margin; mode "both" keeps the two directions only when both agree.

The store is a folder:

    manifest.json   settings, the planned prompts and links, one record per finished prompt
    pairs.jsonl     one PreferencePair per line (derived from the manifest's records)
    images/         PNG files, <prompt index>_<k>.png

Prompts are processed in order; after each one its PNGs, then manifest.json, then
pairs.jsonl are written atomically, so a rerun with the same settings skips the finished
prompts and ends with the same pairs as an uninterrupted run. Images are rounded to 8 bits
before they are judged, so what is judged is exactly what the PNG holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..components import SDComponents
from ..images import to_uint8
from ..lora import lora_merged
from ..prompts import Subject
from ..rewards.base import RewardFn
from ..sampling import PromptEmbeddingCache, SamplerSettings, sample_images
from ..seeds import derive_seed
from ..training import non_finite_problem, notify, state_fingerprint
from .store import IMAGE_FOLDER, KINDS, PairStore, PreferencePair, quantize
from .taxonomy import PromptPair, PromptSpec, Taxonomy

FORMAT = 1  # manifest format version
CROSS_MODES = ("both", "each", "off")



@dataclass(frozen=True)
class PairConfig:
    """How preference pairs are made; every field changes the pairs (a resumed run must match)."""

    RUN_CONTROL: ClassVar[tuple[str, ...]] = ()  # every setting changes the pairs

    prompt_pairs: int = 64  # analogous prompt pairs drawn from the taxonomy (each brings up to 2 new prompts)
    images_per_prompt: int = 4  # K images sampled per prompt
    sample_steps: int = 30  # DDIM steps per image
    guidance: float = 7.5  # classifier-free guidance scale
    eta: float = 1.0  # DDIM noise (1.0 = DDPM's variance; stochastic samplers give better images)
    height: int = 512  # image height in pixels
    width: int = 512  # image width in pixels
    negative_prompt: str = ""  # the unconditional branch's prompt
    sample_batch_size: int = 4  # images per sampling call (memory); each image has its own noise seed
    min_margin: float = 0.25  # smallest reward difference that makes a pair (reward units; ImageReward's
    #                           are standardised: 1 = one standard deviation over typical images)
    self_pairs: bool = True  # keep each prompt's best-vs-worst pair
    cross_pairs: str = "both"  # "both": keep a cross pair's two directions only when the judge agrees both
    #                            ways; "each": keep each direction that holds on its own; "off"
    use_identifier: bool = True  # with a subject, generate with its trigger phrase ("sks plushie"), else "a plushie"
    judge_plain: bool = True  # judge against the prompt without the identifier (a reward model does not know it)
    keep_all_images: bool = False  # save all K images as PNG, not only each prompt's best and worst
    seed: int = 0  # seeds the prompt-pair draw and every image's noise

    def __post_init__(self):
        problems = []
        if non_finite_problem(self):
            problems.append(non_finite_problem(self))
        if min(self.prompt_pairs, self.images_per_prompt, self.sample_steps, self.sample_batch_size) < 1:
            problems.append("prompt_pairs, images_per_prompt, sample_steps and sample_batch_size must be >= 1")
        if self.cross_pairs not in CROSS_MODES:
            problems.append(f"cross_pairs must be one of {CROSS_MODES}, got {self.cross_pairs!r}")
        if not self.self_pairs and self.cross_pairs == "off":
            problems.append("self_pairs is False and cross_pairs is 'off': no pairs would be made")
        if self.self_pairs and self.cross_pairs == "off" and self.images_per_prompt < 2:
            problems.append("self pairs need images_per_prompt >= 2")
        if self.min_margin < 0:
            problems.append(f"min_margin must be >= 0, got {self.min_margin}")
        if self.eta < 0:
            problems.append(f"eta must be >= 0, got {self.eta}")
        if problems:
            raise ValueError("invalid PairConfig: " + "; ".join(problems))

    def sampler(self) -> SamplerSettings:
        return SamplerSettings(self.sample_steps, self.guidance, self.eta, self.height, self.width, self.negative_prompt)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PairConfig":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PlannedPrompt:
    """A prompt of the store: the text generated with and the text judged against."""

    text: str
    judge_text: str
    theme: str
    subtopic: str
    values: dict = field(default_factory=dict)  # attribute -> value


@dataclass(frozen=True)
class Link:
    """Two analogous prompts (indices into the plan) and the attribute they differ in."""

    a: int
    b: int
    attribute: str


@dataclass(frozen=True)
class PairProgress:
    """What `build_pairs` tells its callback after each prompt (ComfyUI's progress reads step/total/preview)."""

    step: int  # prompts finished
    total: int  # prompts planned
    prompt: str  # the prompt just finished
    pairs: int  # pairs kept so far
    preview: Any = None  # PIL image: the prompt's best image


@dataclass
class PairBuildResult:
    folder: Path
    pairs: list[PreferencePair]  # every pair kept so far, in prompt order
    prompts_done: int
    prompts_total: int
    stopped: bool = False  # the callback stopped the run before the last prompt
    counts: dict = field(default_factory=dict)  # {"self": n, "cross": n, "self_dropped": n, "cross_dropped": n}


# --- pure pair decisions --------------------------------------------------------------------


def self_pair(scores: Sequence[float], min_margin: float) -> tuple[int, int] | None:
    """(best, worst) image indices when best - worst >= min_margin and > 0, else None.
    Ties go to the lowest index."""
    values = [float(s) for s in scores]
    if len(values) < 2:
        return None
    best, worst = values.index(max(values)), values.index(min(values))
    margin = values[best] - values[worst]
    return (best, worst) if margin > 0 and margin >= min_margin else None


def cross_decision(own_a: float, b_under_a: float, own_b: float, a_under_b: float,
                   min_margin: float, mode: str = "both") -> tuple[bool, bool]:
    """Whether to keep the cross pair under prompt a (x_a beats x_b) and under prompt b
    (x_b beats x_a). own_a = r(x_a | a), b_under_a = r(x_b | a), and so on."""
    if mode not in CROSS_MODES:
        raise ValueError(f"cross mode must be one of {CROSS_MODES}, got {mode!r}")
    if mode == "off":
        return False, False
    holds_a = _clear(own_a - b_under_a, min_margin)
    holds_b = _clear(own_b - a_under_b, min_margin)
    if mode == "both":
        return holds_a and holds_b, holds_a and holds_b
    return holds_a, holds_b


def _clear(margin: float, min_margin: float) -> bool:
    return margin > 0 and margin >= min_margin


# --- planning --------------------------------------------------------------------------------


def plan_prompts(prompt_pairs: Sequence[PromptPair], config: PairConfig, subject: Subject | None = None,
                 default_subject: str = "a plushie") -> tuple[list[PlannedPrompt], list[Link]]:
    """The distinct prompts of `prompt_pairs` (first-seen order) and their links."""
    if subject is not None:
        phrase = subject.trigger_phrase if config.use_identifier else subject.plain_phrase
        judge_phrase = subject.plain_phrase if config.judge_plain else phrase
    else:
        phrase = judge_phrase = default_subject
    prompts: list[PlannedPrompt] = []
    index: dict[str, int] = {}

    def add(spec: PromptSpec) -> int:
        text = spec.text(phrase)
        if text not in index:
            index[text] = len(prompts)
            prompts.append(PlannedPrompt(text, spec.text(judge_phrase), spec.theme, spec.subtopic, dict(spec.values)))
        return index[text]

    links, seen = [], set()
    for pair in prompt_pairs:
        a, b = add(pair.first), add(pair.second)
        if a != b and frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            links.append(Link(a, b, pair.attribute))
    return prompts, links


# --- building --------------------------------------------------------------------------------


@dataclass
class _Run:
    components: SDComponents
    reward_fn: RewardFn
    config: PairConfig
    store: PairStore
    prompts: list[PlannedPrompt]
    links: list[Link]
    embeddings: PromptEmbeddingCache


def build_pairs(
    components: SDComponents,
    reward_fn: RewardFn,
    taxonomy: Taxonomy,
    folder: str | Path,
    config: PairConfig = PairConfig(),
    callback: Callable[[PairProgress], "bool | None"] | None = None,
    resume: bool = True,
    *,
    base_lora: Mapping[str, torch.Tensor] | None = None,
    subject: Subject | None = None,
) -> PairBuildResult:
    """Samples, judges and stores preference pairs in `folder`; returns every pair kept.

    `config.prompt_pairs` analogous prompt pairs are drawn from `taxonomy` (seeded);
    `{subject}` becomes the subject's trigger phrase (or plain phrase, see PairConfig), or the
    taxonomy's default subject when `subject` is None. `base_lora` (the personalized
    LoRA) is merged into the model while sampling and taken out again afterwards.
    `callback(PairProgress)` runs after each prompt; returning False (or raising
    StopTraining) stops after that prompt. `resume=True` continues a folder built with
    the same settings (a different one is an error); `resume=False` starts it over.
    """
    store = PairStore(folder)
    judge = judge_name(reward_fn)
    prompts, links = plan_prompts(taxonomy.sample_pairs(config.prompt_pairs, config.seed), config, subject,
                                  taxonomy.default_subject)
    fresh = {"format": FORMAT, "settings": config.to_dict(), "judge": judge,
             "model": model_fingerprint(components, base_lora),
             "prompts": [asdict(p) for p in prompts], "links": [asdict(link) for link in links],
             "records": [], "complete": False}
    if not resume:
        store.clear()
    manifest = _resumable(store, fresh)
    store.write(manifest)  # (re)derives pairs.jsonl, in case a run stopped between the two writes
    run = _Run(components, reward_fn, config, store, prompts, links, PromptEmbeddingCache(components))
    stopped = False
    with lora_merged(components, base_lora):
        for index in range(len(manifest["records"]), len(prompts)):
            record, preview = _process_prompt(run, index, manifest["records"])
            manifest["records"].append(record)
            manifest["complete"] = index + 1 == len(prompts)
            store.write(manifest)
            kept = sum(len(r["pairs"]) for r in manifest["records"])
            if notify(callback, PairProgress(index + 1, len(prompts), prompts[index].text, kept, preview)):
                stopped = index + 1 < len(prompts)
                break
    return _result(store, manifest, config, stopped)


def model_fingerprint(components: SDComponents, base_lora: Mapping[str, torch.Tensor] | None) -> str:
    """A cheap identity of the sampling model: the UNet's first and last convolutions (which
    LoRA files do not touch) and the personalized LoRA."""
    unet = components.unet
    weights = state_fingerprint({"conv_in": unet.conv_in.weight, "conv_out": unet.conv_out.weight})
    return hashlib.sha256(f"{weights}:{state_fingerprint(base_lora)}".encode()).hexdigest()


def judge_name(reward_fn: RewardFn) -> str:
    """The name recorded for a judge (its `name` attribute, else its type's name)."""
    return str(getattr(reward_fn, "name", None) or type(reward_fn).__name__)


def _resumable(store: PairStore, fresh: dict) -> dict:
    saved = store.manifest()
    if saved is None:
        return fresh
    differ = [k for k in ("format", "settings", "judge", "model", "prompts", "links") if saved.get(k) != fresh[k]]
    if differ:
        detail = differ
        if "settings" in differ:
            settings = (saved.get("settings") or {}, fresh["settings"])
            detail = [d for d in differ if d != "settings"] + sorted(
                k for k in set(settings[0]) | set(settings[1]) if settings[0].get(k) != settings[1].get(k))
        raise ValueError(f"the pair folder {store.folder} was built with different settings "
                         f"({', '.join(map(str, detail))}); use the same model, settings and judge, "
                         "another folder, or resume=False to start it over")
    return saved


def _process_prompt(run: _Run, index: int, done: list[dict]) -> tuple[dict, Any]:
    """Samples and judges prompt `index`, saves its images, decides its self pair and the
    cross pairs it completes (links whose other prompt is already done)."""
    config, prompt = run.config, run.prompts[index]
    seeds = [derive_seed(config.seed, prompt.text, k) for k in range(config.images_per_prompt)]
    images = _sample(run, prompt.text, seeds)  # [K, 3, H, W] on the 8-bit grid, CPU
    metadata = [{"seed": s, "prompt_index": index, "image": k} for k, s in enumerate(seeds)]
    scores = _judge(run, images, [prompt.judge_text] * len(seeds), metadata)
    best, worst = scores.index(max(scores)), scores.index(min(scores))
    keep = range(len(seeds)) if config.keep_all_images else sorted({best, worst})
    files = {str(k): f"{IMAGE_FOLDER}/{index:05d}_{k}.png" for k in keep}
    for k in keep:
        run.store.save_image(files[str(k)], images[k])
    record = {"index": index, "seeds": seeds, "scores": scores, "best": best, "worst": worst, "files": files,
              "cross": [], "pairs": []}
    chosen = self_pair(scores, config.min_margin) if config.self_pairs else None
    if chosen is not None:
        record["pairs"].append(_pair(f"{index:05d}-self", "self", prompt, files[str(chosen[0])],
                                     files[str(chosen[1])], scores[chosen[0]], scores[chosen[1]]))
    for link in run.links:
        if max(link.a, link.b) == index and config.cross_pairs != "off":
            _cross(run, link, index, images[best], record, done)
    return record, _pil(images[best])


def _cross(run: _Run, link: Link, index: int, best_image: torch.Tensor, record: dict, done: list[dict]) -> None:
    """Judges each best image under the other prompt and keeps the cross pairs that hold.
    The other prompt's best image is read back from its PNG (what a resumed run sees too)."""
    other = link.a if link.b == index else link.b
    manifest_other = done[other]
    other_file = manifest_other["files"][str(manifest_other["best"])]
    other_image = run.store.image(other_file)
    own_file = record["files"][str(record["best"])]
    this, that = run.prompts[index], run.prompts[other]
    meta = [{"prompt_index": other, "cross_of": index}, {"prompt_index": index, "cross_of": other}]
    this_under_that, that_under_this = _judge(run, torch.stack([best_image, other_image]),
                                              [that.judge_text, this.judge_text], meta)
    own_this, own_that = record["scores"][record["best"]], manifest_other["scores"][manifest_other["best"]]
    keep_this, keep_that = cross_decision(own_this, that_under_this, own_that, this_under_that,
                                          run.config.min_margin, run.config.cross_pairs)
    record["cross"].append({"other": other, "attribute": link.attribute, "own": own_this, "other_own": own_that,
                            "own_under_other": this_under_that, "other_under_own": that_under_this,
                            "kept": [keep_this, keep_that]})
    if keep_this:
        record["pairs"].append(_pair(f"{index:05d}-{other:05d}-cross", "cross", this, own_file, other_file,
                                     own_this, that_under_this, link.attribute))
    if keep_that:
        record["pairs"].append(_pair(f"{other:05d}-{index:05d}-cross", "cross", that, other_file, own_file,
                                     own_that, this_under_that, link.attribute))


def _pair(pair_id: str, kind: str, prompt: PlannedPrompt, winner: str, loser: str, winner_score: float,
          loser_score: float, attribute: str = "") -> dict:
    return PreferencePair(pair_id, kind, prompt.text, prompt.judge_text, winner, loser, float(winner_score),
                          float(loser_score), prompt.theme, prompt.subtopic, attribute).to_dict()


def _sample(run: _Run, text: str, seeds: list[int]) -> torch.Tensor:
    config, chunks = run.config, []
    for start in range(0, len(seeds), config.sample_batch_size):
        part = seeds[start : start + config.sample_batch_size]
        images = sample_images(run.components, [text] * len(part), part, config.sampler(), embeddings=run.embeddings)
        chunks.append(quantize(images).cpu())
    return torch.cat(chunks)


def _judge(run: _Run, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> list[float]:
    device = run.components.device
    with torch.no_grad():
        scores = run.reward_fn(images.to(device), prompts, metadata)
    scores = torch.as_tensor(scores).detach().float().flatten().cpu()
    if scores.numel() != len(prompts):
        raise ValueError(f"the judge returned {scores.numel()} scores for {len(prompts)} images; "
                         "a reward returns one number per image")
    return [float(s) for s in scores.tolist()]


def _pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray(to_uint8(image))


def _result(store: PairStore, manifest: dict, config: PairConfig, stopped: bool) -> PairBuildResult:
    records = manifest["records"]
    pairs = [PreferencePair.from_dict(p) for record in records for p in record["pairs"]]
    counts = {kind: sum(p.kind == kind for p in pairs) for kind in KINDS}
    with_self = sum(any(p["kind"] == "self" for p in r["pairs"]) for r in records)
    counts["self_dropped"] = len(records) - with_self if config.self_pairs else 0
    counts["cross_dropped"] = sum(2 - sum(c["kept"]) for r in manifest["records"] for c in r["cross"])
    return PairBuildResult(store.folder, pairs, len(manifest["records"]), len(manifest["prompts"]), stopped, counts)
