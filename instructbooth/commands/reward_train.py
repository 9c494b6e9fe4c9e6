"""`instructbooth reward-train`: learn a reward from a feedback folder (Lee et al. 2023).

    instructbooth reward-train --feedback feedback/ --imagereward ImageReward.pt --output learned.safetensors

Reads good/ and bad/ (a .txt prompt beside each image), computes ImageReward's frozen image-text
features for each image with its prompt and N-1 perturbed prompts (cached with --cache-dir),
trains a small head with MSE to the labels + λ · prompt classification, writes the learned
reward (load it anywhere a reward spec goes: `learned:learned.safetensors`), prints held-out
accuracy and calibration and writes them as JSON beside the output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Learn a reward from good/bad feedback on images (Lee et al. 2023); use it as learned:FILE."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--feedback", required=True, help="feedback folder: good/ and bad/ with NAME.png + NAME.txt")
    parser.add_argument("--imagereward", required=True, help="ImageReward.pt or its safetensors copy (the frozen backbone)")
    parser.add_argument("--output", required=True, help="the learned reward file to write (.safetensors)")
    parser.add_argument("--metrics-json", default=None, help="where to write the metrics (default: OUTPUT_metrics.json)")
    parser.add_argument("--cache-dir", default=None, help="keep computed features here and reuse them (default: none)")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.5,
                        help="λ, weight of the prompt-classification loss (0: labels only; default 0.5)")
    parser.add_argument("--num-prompts", type=int, default=4, help="N: the true prompt + N-1 perturbed ones (default 4)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature over the N prompts' scores")
    parser.add_argument("--aux-on", choices=("good", "all"), default="good",
                        help="images the prompt-classification loss counts (default: those labelled good)")
    parser.add_argument("--taxonomy", default="default",
                        help="prompt taxonomy for one-attribute edits: 'default' (shipped), a .json/.yaml file, or 'none'")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=128, help="width of the head's hidden layers")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="share of images held out for metrics")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto")
    parser.add_argument("--dtype", default="float32", help="the backbone's dtype (float32, float16, bfloat16)")


def run(args: argparse.Namespace) -> int:
    from ..devices import resolve_device
    from ..feedback import read_feedback
    from ..outputs import check_output_file
    from ..reward_learning.features import ImageRewardBackbone
    from ..reward_learning.from_feedback import feedback_labels, learn_from_feedback, metrics_lines
    from ..reward_learning.learned import save_learned_reward, sidecar_config
    from ..reward_learning.train import RewardTrainConfig
    from ..rewards.image_reward import load_image_reward

    # everything that can be refused is refused before any model loads
    config = RewardTrainConfig(lam=args.lam, num_prompts=args.num_prompts, temperature=args.temperature,
                               aux_on=args.aux_on, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, validation_fraction=args.validation_fraction,
                               seed=args.seed)
    items = read_feedback(args.feedback)
    labels = feedback_labels(items)
    if not Path(args.imagereward).is_file():
        raise FileNotFoundError(f"ImageReward weights {args.imagereward} not found")
    output = check_output_file(args.output, [args.feedback, args.imagereward, args.cache_dir])
    metrics_path = Path(args.metrics_json) if args.metrics_json else output.with_name(f"{output.stem}_metrics.json")
    check_output_file(metrics_path, [args.feedback, args.imagereward, output])
    taxonomy = _taxonomy(args.taxonomy)
    good = int(labels.sum())
    print(f"{len(items)} labelled images ({good} good, {len(items) - good} bad) in {args.feedback}")

    device = resolve_device(args.device)
    scorer = load_image_reward(args.imagereward, sidecar_config(args.imagereward), device, args.dtype)
    backbone = ImageRewardBackbone(scorer, Path(args.imagereward).resolve())

    def progress(epoch: int, losses: dict) -> None:
        if epoch == 1 or epoch % 10 == 0 or epoch == config.epochs:
            print(f"epoch {epoch}/{config.epochs}: loss {losses['loss']:.4f} (mse {losses['mse']:.4f}, "
                  f"prompt ce {losses['prompt_ce']:.4f})", flush=True)

    result = learn_from_feedback(items, backbone, config, args.cache_dir, taxonomy, progress)
    save_learned_reward(output, result.head, backbone, config, result.metrics)
    from ..files import write_json

    write_json(metrics_path, {"output": str(output), "backbone": backbone.identity, "images": len(items),
                              "good": good, "settings": config.to_dict(), "metrics": result.metrics})
    for line in metrics_lines(result.metrics):
        print(line)
    print(f"wrote {output} (use it as --reward learned:{output}) and {metrics_path}")
    if "validation" not in result.metrics:
        print("note: no held-out images (--validation-fraction 0 or too few images); the metrics above are on "
              "the training images", file=sys.stderr)
    return 0


def _taxonomy(name: str):
    from ..preference.taxonomy import Taxonomy

    if name.lower() == "none":
        return None
    return Taxonomy.default() if name.lower() == "default" else Taxonomy.load(name)
