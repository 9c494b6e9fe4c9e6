"""Two CPU processes (gloo) gather the same statistics, and train the same LoRA, as one
process with twice the batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from instructbooth.components import tiny_components
from instructbooth.prompts import RLPrompts, Subject
from instructbooth.rl.config import RLConfig
from instructbooth.rl.trainer import train_rl

PROMPTS = RLPrompts(("{subject} riding a bicycle", "{subject} swimming", "{subject} reading"), Subject("sks", "plushie"),
                    ("{subject} baking", "{subject} on the moon", "{subject} dancing"))
# Per-process sizes: one process draws 2 batches of 4; two processes draw 2 batches of 2 each.
SETTINGS = dict(sample_steps=4, guidance=2.0, height=16, width=16, sample_batches=2, epochs=2, inner_epochs=2,
                learning_rate=3e-2, clip_range=1e-2, advantage="tracker", tracker_min_count=2, kl_weight=0.1,
                heldout_every=1, identifier_ratio=0.5, images_per_prompt=1, gradient_accumulation_steps=1,
                timestep_window=1.0)


class RecordingBrightness:
    """Mean pixel value, remembering the seed of every image it scored."""

    def __init__(self):
        self.seeds: list[int] = []

    def __call__(self, images, prompts, metadata):
        self.seeds += [m["seed"] for m in metadata if "template" in m]  # training samples only
        return images.mean(dim=(1, 2, 3))


def _run(per_process: int) -> tuple[dict, list[int]]:
    reward = RecordingBrightness()
    config = RLConfig(**SETTINGS, sample_batch_size=per_process, train_batch_size=2 * per_process)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: thread count changes CPU float reductions
    try:
        result = train_rl(tiny_components(0), reward, PROMPTS, config)
    finally:
        torch.set_num_threads(threads)
    summary = {"metrics": [{k: v for k, v in e.items() if k != "time"} for e in result.metrics],
               "prompt_stats": result.prompt_stats, "final_heldout": result.final_heldout,
               "trained": result.trained_state}
    return summary, reward.seeds


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        summary, seeds = _run(per_process=2)
        torch.save({"summary": summary, "seeds": seeds}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_gather_what_one_process_would(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    one, one_seeds = _run(per_process=4)

    # the work was split: disjoint samples whose union is the single process's
    assert not set(ranks[0]["seeds"]) & set(ranks[1]["seeds"])
    assert sorted(ranks[0]["seeds"] + ranks[1]["seeds"]) == sorted(one_seeds)
    assert len(one_seeds) == SETTINGS["epochs"] * SETTINGS["sample_batches"] * 4

    for two in (r["summary"] for r in ranks):  # every process holds the gathered statistics
        assert _close(two["metrics"], one["metrics"])
        assert _close(two["prompt_stats"], one["prompt_stats"])
        assert two["final_heldout"]["count"] == one["final_heldout"]["count"] == len(PROMPTS.heldout)
        assert two["final_heldout"]["mean"] == pytest.approx(one["final_heldout"]["mean"], abs=1e-5)
        # averaged gradients: the same LoRA. Batch size changes the last bits of the UNet's
        # outputs, and Adam's first steps turn near-zero gradients into +-lr moves, so a few
        # elements may differ by ~1e-3 (the trained values are ~1e-1).
        worst = max((two["trained"][k] - v).abs().max().item() for k, v in one["trained"].items())
        largest = max(v.abs().max().item() for k, v in one["trained"].items() if "lora_up" in k)
        assert worst < 2e-3 and largest > 2e-2, (worst, largest)
    assert one["metrics"][-1]["reward"]["all"]["count"] == 8


def _close(a, b, tolerance: float = 1e-5) -> bool:
    """Equal structure, numbers within `tolerance` (batch size changes CPU float summation
    order in the last bits); "time" entries are ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - {"time"}
        return keys == set(b) - {"time"} and all(_close(a[k], b[k], tolerance) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, abs=tolerance, nan_ok=True)
    return a == b
