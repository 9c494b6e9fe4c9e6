"""RL Fine-Tune: make the personalized model follow instructions again by maximising ImageReward."""

from __future__ import annotations

from comfy_api.latest import io

from ..instructbooth.lora import save_lora
from ..instructbooth.prompts import (
    RLPrompts,
    Subject,
    check_subject_template,
    load_prompt_set,
    migrate_templates,
    parse_prompt_lines,
    shipped_prompt_sets,
    template_slots,
)
from ..instructbooth.rl.config import ADVANTAGE_MODES, METHODS, RLConfig
from ..instructbooth.rl.metrics import draw_reward_curve
from ..instructbooth.training import state_fingerprint
from ..instructbooth.rl.trainer import train_rl
from . import bridge
from .evaluation_nodes import EVALUATION_MODEL
from .reward_nodes import IMAGE_REWARD
from .runs import (RunFolder, config_from_inputs, fingerprint_images, fingerprint_tensors, interruptible, keyed_run, publish_lora,
                   train_on_comfy_weights)

DEFAULTS = RLConfig()
LORA_MODEL, LOSS_MAP = io.Custom("LORA_MODEL"), io.Custom("LOSS_MAP")
DEFAULT_PROMPTS = """# One prompt per line; {subject} becomes 'sks plushie' (or 'a plushie' for the plain share).
# @actions and @interactions add the prompt sets shipped with InstructBooth.
@actions
@interactions"""

class RLFineTune(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InstructBoothRLFineTune",
            display_name="InstructBooth RL Fine-Tune",
            category="InstructBooth",
            description="InstructBooth's second stage: samples the personalized model on instruction prompts, scores "
            "the images with ImageReward and trains a LoRA to raise the reward (DDPO or reward-weighted regression). "
            "Saves ONE LoRA file (personalized + RL) in models/loras; a re-run reuses or resumes.",
            inputs=[
                io.Model.Input("model", tooltip="The base SD1.5 model from Load Checkpoint (without the subject LoRA)."),
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint (decodes samples for the reward)."),
                IMAGE_REWARD.Input("image_reward", tooltip="From ImageReward Loader: the reward to maximise."),
                io.String.Input("prompts", multiline=True, default=DEFAULT_PROMPTS,
                                tooltip="Training prompts, one per line, each with {subject} where the subject goes. "
                                "'#' starts a comment; '@actions' / '@interactions' add the shipped sets."),
                io.String.Input("identifier", default="sks", tooltip="The identifier the subject LoRA was trained with."),
                io.String.Input("class_noun", default="plushie", tooltip="The subject's class noun, e.g. 'plushie'."),
                io.String.Input("description", default="", tooltip="Optional detailed description of the subject "
                                "(added to identifier prompts when use_description is on)."),
                io.Float.Input("identifier_ratio", default=DEFAULTS.identifier_ratio, min=0.0, max=1.0, step=0.05,
                               tooltip="Share of prompts with the identifier ('sks plushie ...'); the rest say "
                               "'a plushie ...'. InstructBooth mixes both."),
                io.Boolean.Input("use_description", default=DEFAULTS.use_description,
                                 tooltip="Append the description to identifier prompts."),
                io.Combo.Input("method", options=list(METHODS), default=DEFAULTS.method,
                               tooltip="ddpo: policy gradient on the sampling steps (InstructBooth); rwr: "
                               "reward-weighted denoising loss on fresh samples every epoch; lee: Lee et al. 2023, "
                               "one offline round weighted by the reward itself (a learned reward). rwr and lee need "
                               "subject_images or regulariser_images unless rwr_beta is 0."),
                io.Int.Input("epochs", default=DEFAULTS.epochs, min=1, max=10000,
                             tooltip="Rounds of sample -> score -> train."),
                io.Int.Input("sample_steps", default=DEFAULTS.sample_steps, min=1, max=1000,
                             tooltip="Sampler steps per training sample (DDIM with noise, eta 1)."),
                io.Float.Input("guidance", default=DEFAULTS.guidance, min=1.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance of the samples."),
                io.Int.Input("resolution", default=DEFAULTS.height, min=64, max=2048, step=64,
                             tooltip="Side of the sampled images in pixels."),
                io.Int.Input("sample_batch_size", default=DEFAULTS.sample_batch_size, min=1, max=256,
                             tooltip="Samples per sampling call."),
                io.Int.Input("sample_batches", default=DEFAULTS.sample_batches, min=1, max=1000,
                             tooltip="Sampling calls per epoch (samples per epoch = batch_size x this)."),
                io.Int.Input("train_batch_size", default=DEFAULTS.train_batch_size, min=1, max=256,
                             tooltip="Samples per optimizer step; must divide the samples per epoch."),
                io.Int.Input("gradient_accumulation_steps", default=DEFAULTS.gradient_accumulation_steps, min=1,
                             max=256, tooltip="Micro-batches per optimizer step: each update averages train_batch_size "
                             "x this many samples while memory stays at one micro-batch (default 2 x 4 = 8)."),
                io.Int.Input("images_per_prompt", default=DEFAULTS.images_per_prompt, min=1, max=256,
                             tooltip="Images of each drawn prompt, sampled together; must divide batch_size. With "
                             "advantage 'group' each image is compared with its prompt's other images."),
                io.Combo.Input("advantage", options=list(ADVANTAGE_MODES), default=DEFAULTS.advantage,
                               tooltip="How rewards become advantages. group: against the same prompt's images this "
                               "epoch (needs images_per_prompt >= 2); tracker: DDPO's running per-prompt statistics "
                               "(falls back to the epoch's until tracker_min_count); batch: the whole epoch."),
                io.Int.Input("tracker_min_count", default=DEFAULTS.tracker_min_count, min=1, max=10000,
                             tooltip="advantage 'tracker': rewards a prompt needs before its own statistics are used."),
                io.Float.Input("timestep_window", default=DEFAULTS.timestep_window, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of each trajectory, from its start, that DDPO trains on. 0.96 leaves out "
                               "the last 2 of 50 steps, whose tiny noise would dominate the gradient."),
                io.Float.Input("timestep_fraction", default=DEFAULTS.timestep_fraction, min=0.01, max=1.0, step=0.01,
                               tooltip="Share of the window's steps trained per sample (a random subset): less is faster."),
                io.Float.Input("clip_range", default=DEFAULTS.clip_range, min=1e-6, max=1.0, step=1e-5, round=1e-6,
                               tooltip="DDPO: the likelihood ratio is clipped to 1 +- this."),
                io.Float.Input("learning_rate", default=DEFAULTS.learning_rate, min=1e-7, max=1e-1, step=1e-6,
                               round=1e-7, tooltip="AdamW learning rate of the RL LoRA."),
                io.Int.Input("lora_rank", default=DEFAULTS.lora_rank, min=1, max=128,
                             tooltip="Rank of the new LoRA trained on top of the subject LoRA."),
                io.Float.Input("kl_weight", default=DEFAULTS.kl_weight, min=0.0, max=100.0, step=0.01,
                               tooltip="ddpo: penalty for drifting from the personalized model on identifier samples."),
                io.Float.Input("rwr_beta", default=DEFAULTS.rwr_beta, min=0.0, max=100.0, step=0.01,
                               tooltip="rwr: weight of the denoising loss on subject_images (keeps the subject)."),
                io.Combo.Input("mixed_precision", options=["no", "fp16", "bf16"], default=DEFAULTS.mixed_precision,
                               tooltip="16-bit frozen weights (fp16/bf16) save memory on GPUs; 'no' is float32."),
                io.Boolean.Input("gradient_checkpointing", default=DEFAULTS.gradient_checkpointing,
                                 tooltip="Recompute UNet activations in the backward pass: less memory, slower."),
                io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip="Seeds prompts, noise, shuffles and the LoRA init."),
                io.String.Input("lora_name", default="instructbooth/sks_plushie_rl",
                                tooltip="File name of the result in models/loras (personalized + RL in one file)."),
                LORA_MODEL.Input("lora", optional=True, tooltip="The subject LoRA from Personalize (its 'lora' output)."),
                EVALUATION_MODEL.Input("subject_measure", optional=True,
                                       tooltip="DINO (or CLIP) from 'Load CLIP / DINO for Evaluation': each epoch, "
                                       "the likeness of identifier samples to subject_images is logged and drawn; "
                                       "with subject_threshold it stops the run before the subject is lost."),
                io.Float.Input("subject_threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Stop (keeping the LoRA of the epoch before) when the subject measure falls "
                               "below this; 0 = never. DINO of a well-kept subject is typically 0.5-0.7."),
                io.Image.Input("regulariser_images", optional=True,
                               tooltip="rwr/lee: images for the beta term instead of subject_images (e.g. class "
                               "images), each with the class prompt 'a photo of a <class noun>'."),
                io.Image.Input("subject_images", optional=True,
                               tooltip="The personalization photos (a batch), for rwr's subject regulariser."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The base model with the tuned LoRA applied."),
                io.Clip.Output(display_name="CLIP", tooltip="The text encoder with the tuned LoRA applied."),
                LORA_MODEL.Output(display_name="lora", tooltip="The tuned LoRA (subject + RL) as one state."),
                LOSS_MAP.Output(display_name="reward_map", tooltip="Mean reward per epoch (for Plot Loss Graph)."),
                io.Image.Output(display_name="reward_curve", tooltip="Mean reward per epoch and prompt group."),
            ],
        )

    @classmethod
    def validate_inputs(cls, prompts, identifier, lora_name, **settings) -> bool | str:
        problems = [settings_problem(settings)]
        if prompts is not None:
            try:
                prompt_templates(prompts)
            except ValueError as error:
                problems.append(str(error))
        problems.append(bridge.name_problem("loras", lora_name, must_exist=False))
        if identifier is not None and not identifier.strip():
            problems.append("identifier is empty; use the one the subject LoRA was trained with, e.g. 'sks'")
        return "; ".join(p for p in problems if p) or True

    @classmethod
    def execute(cls, model, clip, vae, image_reward, prompts, identifier, class_noun, description, lora_name,
                lora=None, subject_images=None, subject_measure=None, regulariser_images=None,
                **settings) -> io.NodeOutput:
        config, measure = _config(settings), _subject_measure(subject_measure, subject_images)
        subject = Subject(identifier.strip(), class_noun.strip(), description.strip())
        prompt_set = RLPrompts(tuple(prompt_templates(prompts)), subject)
        _warn_if_patched(model, lora)
        state = bridge.comfy_state_dict(model, clip, vae)
        weights = fingerprint_tensors(state)

        def train(run: RunFolder) -> None:
            result = train_on_comfy_weights(bridge.trainable_copy(state), model, config.total_updates, lambda parts,
                                            progress: train_rl(parts, interruptible(image_reward), prompt_set, config,
                                                               progress, run.path, base_lora=lora,
                                                               subject_images=subject_images, subject_measure=measure,
                                                               regulariser_images=regulariser_images))
            save_lora(run.result_path, result.lora_state, result.metadata)

        run = keyed_run("rl", lora_name, config, train, weights=weights, base_lora=state_fingerprint(lora),
                        reward=fingerprint_tensors(image_reward.model.state_dict()), prompts=prompt_set.templates,
                        subject=[subject.identifier, subject.class_noun, subject.description],
                        **_image_keys(subject_images, regulariser_images, subject_measure if measure else None))
        model, clip, tuned, _ = publish_lora(run, model, clip, lora_name, weights)
        return io.NodeOutput(model, clip, tuned, *_reward_outputs(run))


def _reward_outputs(run: RunFolder) -> tuple[dict, object]:
    """(LOSS_MAP of the mean reward per epoch, the reward-curve IMAGE) from the run's metrics.json."""
    history = run.read_json("metrics.json", {}).get("epochs", [])
    rewards = [entry["reward"]["all"]["mean"] for entry in history]
    return {"loss": rewards, "reward": rewards}, bridge.pil_to_image(draw_reward_curve(history))


def prompt_templates(text: str) -> list[str]:
    """Templates from the prompts widget: lines with {subject}, '@set' lines naming shipped sets.

    Raises ValueError naming the lines without the subject, unknown sets, or an empty list.
    An older workflow's lone {id} is read as {subject} (prompts.migrate_templates)."""
    templates = []
    for line in parse_prompt_lines(text or ""):
        if line.startswith("@"):
            name = line[1:].strip()
            if name not in shipped_prompt_sets():
                raise ValueError(f"unknown prompt set {line!r}; shipped sets: "
                                 + ", ".join("@" + s for s in shipped_prompt_sets()))
            templates += load_prompt_set(name)
        else:
            templates.append(line)
    templates = migrate_templates(templates)
    missing = [t for t in templates if not template_slots(t) & {"subject", "id"}]
    if missing:
        shown = "; ".join(repr(t) for t in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ValueError(f"prompts without {{subject}}: {shown}. Write {{subject}} where the subject goes, "
                         "e.g. '{subject} riding a bicycle'")
    for template in templates:
        check_subject_template(template)  # unknown placeholders
    if not templates:
        raise ValueError("no training prompts: write one per line with {subject}, e.g. '{subject} riding a bicycle', "
                         "or @actions")
    return list(dict.fromkeys(templates))


NOT_SETTINGS = ("model", "clip", "vae", "image_reward", "prompts", "identifier", "class_noun", "description",
                "lora_name", "lora", "subject_images", "subject_measure", "regulariser_images")


def _config(settings: dict) -> RLConfig:
    """The RLConfig of the node's setting inputs, named like its fields (`resolution`: height and
    width; the LoRA alpha follows its rank, RLConfig's default; subject_threshold 0 is no guard)."""
    return config_from_inputs(RLConfig, settings, subject_threshold=settings.get("subject_threshold") or None)


def _image_keys(subject_images, regulariser_images, measure_model) -> dict:
    """Run-key fingerprints of the optional inputs (None where not connected)."""
    return {"subject_images": fingerprint_images([subject_images]) if subject_images is not None else None,
            "regulariser_images": fingerprint_images([regulariser_images]) if regulariser_images is not None else None,
            "subject_measure": fingerprint_tensors(measure_model.model.state_dict()) if measure_model else None}


def _warn_if_patched(model, lora) -> None:
    if lora is not None and getattr(model, "patches", None):
        bridge.log.warning("InstructBooth RL: the MODEL already carries LoRA patches and a subject LoRA is connected "
                           "too; connect the base model from Load Checkpoint to avoid applying it twice")


def _subject_measure(embedder, photos):
    """The subject measure of the optional inputs: likeness of samples to the photos, or None."""
    if embedder is None:
        return None
    if photos is None:
        raise bridge.NodeInputError("subject_measure compares identifier samples with the subject's photos: connect "
                                    "subject_images (the photos the LoRA was personalized on)")
    from ..instructbooth.evaluation import SubjectLikeness

    return SubjectLikeness(embedder, [picture for batch in bridge.image_batches(photos)
                                      for picture in bridge.images_to_bchw(batch)])


def settings_problem(settings: dict) -> str:
    """What is wrong with the setting inputs (RLConfig's refusal), or "" (also when some are linked)."""
    expected = {i.id for i in RLFineTune.define_schema().inputs} - set(NOT_SETTINGS) - {"prompts", "identifier"}
    if not expected <= set(settings):
        return ""
    try:
        _config(settings)
    except ValueError as error:
        return str(error)
    return ""
