"""The settings of a demo run: how models are evaluated, the two stages' configs, and the variants.

`DemoConfig` is what `run_demo` takes (and what a resumed run must match); `quick_config`
is the seconds-long smoke-test run; `subject_weighted` the labelled reward variant; `no_prior`
the labelled recipe without prior preservation (RECIPES: the CLI's --recipe).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..lora import UNET_ALL_TARGETS, UNET_ATTENTION_TARGETS
from ..personalize import PersonalizeConfig
from ..rl.config import RLConfig
from ..sampling import SamplerSettings
from .prompts import CLASS_NOUN, DESCRIPTION, IDENTIFIER
from .world import IMAGE_SIZE

MODELS = ("base", "dreambooth", "instructbooth")
CLASS_KINDS = ("toy", "scenes")  # DemoConfig.class_kind
SPLITS = ("train", "heldout")
RANDOM_WEIGHTS = "random"  # DemoConfig.weights value for an untrained model (plumbing and tests)



@dataclass(frozen=True)
class EvalConfig:
    """How the models are scored: images per prompt, sampled like RL samples them."""

    steps: int = 10  # stochastic DDIM steps per image (as RL samples)
    guidance: float = 1.0  # as RL samples: one UNet pass per step (base model held-out alignment 0.618; 0.646 at
    #                        guidance 2, the demo model's best; 4 breaks it)
    eta: float = 1.0  # DDIM noise (1 = ancestral; 0 gives washed-out images with this model)
    per_prompt: int = 2  # images per prompt (fixed seeds, the same for every model)
    prompts_per_split: int | None = None  # evenly spaced subset of the scenes; None = all (72 / 36)
    batch_size: int = 64  # images per sampling call
    alone_per_prompt: int = 8  # images of the subject alone per background (24: its rate within about +-0.1)

    def settings(self) -> SamplerSettings:
        return SamplerSettings(self.steps, self.guidance, self.eta, IMAGE_SIZE, IMAGE_SIZE)


# Every Linear and Conv2d of the UNet. Attention alone (SD1.5's usual LoRA) cannot learn the
# striped subject here: the demo UNet has no attention at 16x16, where the stripes live.
ALL_UNET_LAYERS = UNET_ALL_TARGETS

DEMO_PERSONALIZE = PersonalizeConfig(
    identifier=IDENTIFIER,
    class_noun=CLASS_NOUN,
    use_captions=True,  # each reference PNG has its caption beside it
    lora_rank=16,
    lora_alpha=16.0,
    unet_targets=ALL_UNET_LAYERS,
    steps=600,  # the subject alone in 92 of 120 images over 5 seeds (without prior preservation 100 of 120;
    #             300 steps on a weaker toy prior: 13 of 24 on seed 0)
    batch_size=6,
    learning_rate=1e-3,
    prior_weight=0.1,  # on DemoConfig.class_images, the training scenes: at weight 1 composed prompts drew the
    #                    subject in 8% of images, at .1 in 15% (seed 0, README's table)
    resolution=IMAGE_SIZE,
    flip=False,  # a mirrored subject has its stripes the wrong way round
    checkpoint_every=0,
)

DEMO_RL = RLConfig(
    method="ddpo",  # InstructBooth's policy gradient
    sample_steps=10,  # 10 stochastic DDIM steps score like 20 with this model (0.70 vs 0.72 alignment)
    eta=1.0,
    guidance=1.0,  # no classifier-free guidance: one UNet pass per step, half the work of guidance 2
    height=IMAGE_SIZE,
    width=IMAGE_SIZE,
    sample_batch_size=32,
    sample_batches=8,  # 256 samples per epoch: 32 prompts x 8 images; at 64 the gradient is mostly noise (seed 0:
    #                    nothing moves at lr 3e-3, the reward falls at 1e-2)
    images_per_prompt=8,  # each image compared with its own prompt's 7 others ...
    advantage="group",  # ... (150 prompts rarely repeat, so a per-prompt tracker would not warm up)
    epochs=25,  # 30 scored lower on seeds 0 and 1 (0.198, 0.250 against 0.215, 0.274 at 25; full window)
    train_batch_size=16,  # micro-batch ...
    gradient_accumulation_steps=16,  # ... x 16 = all 256 samples in one optimizer step per epoch
    timestep_window=0.5,  # the first 5 of the 10 steps, where the layout is decided: the last step's std is 0.03
    #                       and its 1/std-scaled gradient drowned the rest (no learning at all with every step)
    timestep_fraction=1.0,  # all 5 (2 of them at random per sample: 0.174, 0.278 and 0.163 on seeds 0-2 against
    #                         0.215, 0.274 and 0.385)
    clip_range=1e-2,
    learning_rate=5e-3,  # at 1e-2 the reward collapsed after epoch 13 on seed 1 (5-seed headline 0.237 against 0.333)
    lora_rank=4,
    lora_alpha=4.0,
    unet_targets=UNET_ATTENTION_TARGETS,  # on every layer the reward fell from .44 to .17 within 9 epochs (seed 0)
    identifier_ratio=0.5,  # half the prompts with the identifier (5 seeds: 0.25 scores the same, 0.329 against 0.333;
    #                        0.75 lower on seeds 0-2: 0.212, 0.267, 0.319 against 0.215, 0.274, 0.385)
    reward_plain_prompt=True,  # the method's reward: the image scored against "... next to a toy" (no subject term)
    heldout_every=5,
    heldout_seeds=1,
    parallel_batches=2,  # 2 cores: sampling batches and micro-batches two at a time (threads.py), the same numbers
)


@dataclass(frozen=True)
class DemoConfig:
    """One demo run. `seed` replaces the seeds of the personalization and RL configs."""

    seed: int = 0  # reference photos, LoRA inits, training noise, evaluation seeds
    reference_images: int = 6  # the subject's photos (cycling through the 3 backgrounds)
    detailed: bool = True  # the detailed description ("with pink and cyan stripes") in every subject prompt
    layout: str = "after"  # where subject prompts name the subject: "after" the scene or "before" it (see LAYOUTS)
    personalize: PersonalizeConfig = DEMO_PERSONALIZE  # stage 1 (description and seed are filled in)
    rl: RLConfig = DEMO_RL  # stage 2 (seed is filled in)
    subject_weight: float | None = None  # None: the method's reward (class-noun prompt, no subject term);
    #                                      a weight: the labelled variant `subject_weighted` (see there)
    evaluation: EvalConfig = EvalConfig()
    class_images: int = 72  # > 0: prior preservation on this many images the model draws before personalization
    #                         (write_class_images); 0: none, DreamBooth then draws no object at all (`no_prior`)
    class_kind: str = "scenes"  # what they show: "scenes", the training scenes alone ("two red circles on a black
    #                             background"; a regulariser that is not DreamBooth's class prompt), or "toy",
    #                             DreamBooth's class prompt ("<training scene> next to a toy": the subject then
    #                             vanishes from composed prompts, README's table)
    showcase: int = 4  # prompts per split shown in the report's grids
    weights: str | None = None  # None: the shipped model; a folder with demo_model.*; a pretraining
    #                             checkpoint (last.pt, its EMA weights); "random": untrained

    def personalize_settings(self) -> PersonalizeConfig:
        """The personalization config as run: this seed, the description when `detailed`, prior
        preservation when `class_images`."""
        return replace(self.personalize, seed=self.seed, description=DESCRIPTION if self.detailed else "",
                       prior_preservation=self.class_images > 0)

    def rl_settings(self) -> RLConfig:
        """The RL config as run: this seed; in the "after" layout the description goes on the
        identifier prompts only (RLConfig.use_description), as a comma-separated tail."""
        return replace(self.rl, seed=self.seed, use_description=self.detailed and self.layout == "after")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "reference_images": self.reference_images, "detailed": self.detailed,
                "layout": self.layout, "subject_weight": self.subject_weight,
                "personalize": self.personalize_settings().to_dict(), "rl": self.rl_settings().to_dict(),
                "evaluation": asdict(self.evaluation), "class_images": self.class_images,
                "class_kind": self.class_kind, "showcase": self.showcase, "weights": self.weights}


def quick_config(seed: int = 0, weights: str | None = None) -> DemoConfig:
    """A seconds-long run of every stage (smoke tests): few steps, few prompts, tiny RL."""
    return DemoConfig(
        seed=seed, reference_images=3, weights=weights, showcase=2, class_images=3,
        personalize=replace(DEMO_PERSONALIZE, steps=4, batch_size=3),
        rl=replace(DEMO_RL, sample_steps=4, sample_batch_size=4, sample_batches=2, epochs=2, train_batch_size=4,
                   gradient_accumulation_steps=1, images_per_prompt=2, heldout_every=1),
        evaluation=EvalConfig(steps=4, per_prompt=1, prompts_per_split=4, alone_per_prompt=1),
    )


def subject_weighted(config: DemoConfig, weight: float = 0.5) -> DemoConfig:
    """The labelled variant with a subject term the method does not have: identifier samples
    are scored against the identifier prompt, `weight` x (subject at the checker's threshold)
    + (1 - weight) x (share of the instruction's attributes)."""
    return replace(config, subject_weight=weight, rl=replace(config.rl, reward_plain_prompt=False))


def no_prior(config: DemoConfig) -> DemoConfig:
    """A labelled recipe, the demo's default until the 5-seed runs of docs/quality.md: DreamBooth
    without prior preservation, RL on 64 samples per update at guidance 2 (docs/quality_no_prior.md).

    DreamBooth then overfits the plain way: it draws the subject alone in 100 of 120 images and on
    composed prompts drops the objects (no object at all in 72 of 72 held-out images on seed 0). RL has
    no sample with the subject next to the requested objects to move towards, so it raises only how
    often the subject appears: over 5 seeds the held-out headline goes 0.186 -> 0.218 and alignment
    stays at 0.245, where the default goes 0.116 -> 0.333 and alignment 0.472 -> 0.532.
    """
    return replace(
        config, class_images=0, class_kind="toy",
        evaluation=replace(config.evaluation, guidance=2.0),
        rl=replace(config.rl, guidance=2.0, sample_batches=2, gradient_accumulation_steps=4, learning_rate=3e-3,
                   identifier_ratio=0.25, timestep_fraction=1.0),
    )


RECIPES = {"default": lambda config: config, "no_prior": no_prior}  # DemoConfig -> DemoConfig
