"""Lee et al.'s one offline round: the first epoch's samples, scored once, are what every epoch
trains on (`RLConfig.offline`, method "lee").

`OfflineRound.samples(ctx, epoch)` samples and scores at the first epoch only; it keeps what
reward-weighted training needs (final latents, prompt embeddings, seeds, prompts, rewards),
and with a checkpoint folder writes it there per process (`offline-samples-<rank>.pt`, atomic,
read back with weights_only), so a resumed run trains on the same round.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..files import write_torch
from ..prompts import DrawnPrompt
from ..sampling import Trajectories
from .collect import EpochSamples, collect_samples
from .context import RunContext


@dataclass
class OfflineRound:
    folder: Path | None  # the checkpoint folder (None: kept in memory only)
    kept: EpochSamples | None = None

    def samples(self, ctx: RunContext, epoch: int) -> EpochSamples:
        """The round's samples: drawn now at the first epoch, else the kept (or saved) ones."""
        if self.kept is None and epoch > 0:
            self.kept = self._load(ctx)
        if self.kept is None:
            self.kept = _lean(collect_samples(ctx, epoch))
            if self.folder is not None:
                write_torch(self._path(ctx), _to_file(self.kept))
            return self.kept
        return EpochSamples(self.kept.trajectories, self.kept.drawn, self.kept.rewards, self.kept.local_rows,
                            subject_scores=[], preview=None, sample_seconds=0.0, reward_seconds=0.0)

    def _path(self, ctx: RunContext) -> Path:
        return Path(self.folder) / f"offline-samples-{ctx.processes.rank}.pt"

    def _load(self, ctx: RunContext) -> EpochSamples:
        path = None if self.folder is None else self._path(ctx)
        if path is None or not path.is_file():
            raise ValueError(f"method 'lee' resumes on its one offline round of samples, and {path} is missing: "
                             "start over (resume=False / --no-resume)")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        device = ctx.device
        trajectories = Trajectories(
            latents=saved["final_latents"].to(device)[:, None], log_probs=torch.zeros(len(saved["seeds"]), 0),
            timesteps=saved["timesteps"], prompt_embeds=saved["prompt_embeds"].to(device),
            prompts=json.loads(saved["prompts"]), seeds=[int(s) for s in saved["seeds"].tolist()])
        drawn = [DrawnPrompt(**item) for item in json.loads(saved["drawn"])]
        return EpochSamples(trajectories, drawn, saved["rewards"], saved["local_rows"], [], None, 0.0, 0.0)


def _lean(samples: EpochSamples) -> EpochSamples:
    """The samples without the trajectories' intermediate latents (reward-weighted training uses
    the final ones only)."""
    t = samples.trajectories
    lean = Trajectories(latents=t.final_latents[:, None].clone(), log_probs=t.log_probs[:, :0], timesteps=t.timesteps,
                        prompt_embeds=t.prompt_embeds, prompts=t.prompts, seeds=t.seeds, prompt_ids=t.prompt_ids)
    return EpochSamples(lean, samples.drawn, samples.rewards, samples.local_rows, samples.subject_scores,
                        samples.preview, samples.sample_seconds, samples.reward_seconds)


def _to_file(samples: EpochSamples) -> dict:
    t = samples.trajectories
    return {"final_latents": t.final_latents.cpu(), "prompt_embeds": t.prompt_embeds.cpu(), "timesteps": t.timesteps.cpu(),
            "seeds": torch.tensor(t.seeds, dtype=torch.long), "prompts": json.dumps(t.prompts),
            "drawn": json.dumps([asdict(d) for d in samples.drawn]), "rewards": samples.rewards,
            "local_rows": samples.local_rows}
