"""Resume: which checkpoint a run continues from, and continuing it exactly, so that a run stopped at any batch
and resumed ends bit-identical to an uninterrupted one (pantheon.cluster.preemption writes what this reads).

What to resume from: `ckpt_path: last` (the default) is this run directory's checkpoints/last.ckpt when there is
one (a requeued job, a rerun with the same hydra.run.dir), else a fresh start; a path must exist; null starts
fresh (`checkpoint_to_resume`).

How: Lightning restores model, optimizer, LR schedulers, callbacks (EMA) and loop progress from a checkpoint. Two
things it leaves to us:

- The data order mid-epoch. A resumed epoch would start its shuffle again from the top. The train loader is
  rebuilt around ResumableSampler (the epoch's order is a pure function of seed and epoch, the same on every
  rank; each rank takes its shard, as DistributedSampler does) and ResumableDataLoader remembers how many
  batches of the epoch it handed out. Lightning saves that in checkpoints and hands it back on resume
  (its `state_dict`/`load_state_dict` protocol for train loaders), and the resumed epoch skips them.
- The random numbers (noise, timesteps, dropout, caption dropout). Instead of saving each rank's generator
  states (which needs every rank's state in rank 0's checkpoint, hence a collective inside every save), the
  generators are reseeded at each boundary where a checkpoint can be taken, from (seed, rank, batches
  trained so far). The stream a batch sees is then a function of where it is in training, whichever process
  got there, as in fairseq's per-update seeding.

Random augmentation therefore happens in the main process, after the reseeding (the flowers' random flip is
applied to the batch in the datamodule's on_after_batch_transfer): workers are seeded per epoch iterator, which a
resumed run creates at a different point, so a random transform inside a worker would not replay.
"""

from __future__ import annotations

import functools
import os
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from pantheon.utils import atomic
from pantheon.utils.errors import UserError
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from (truncated, corrupt, not a checkpoint), or None.
    torch writes a zip archive with a CRC per entry: reading it whole catches a truncated file (a save killed
    before the atomic rename could not leave one, a full disk or a copy can) and flipped bits alike, without
    unpickling anything. A DeepSpeed checkpoint (a folder of shards) is checked by DeepSpeed when it loads."""
    if path.is_dir():
        return None
    try:
        if not zipfile.is_zipfile(path):
            return "not a torch checkpoint (truncated or overwritten?)"
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"unreadable ({err})"
    return f"corrupt entry {bad}" if bad else None


def checkpoint_to_resume(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """`last`: the newest checkpoint of this run directory that loads: last.ckpt, `last.ckpt.old` (an
    interrupted DeepSpeed folder swap leaves that one complete), then the periodic ones, newest first; a bad
    one is skipped with a warning and kept. None (a fresh start) when the run has no checkpoint. An explicit
    path must exist and load; null: fresh."""
    if ckpt_path in (None, "", "none", "null"):
        return None
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.exists():
            raise UserError(f"ckpt_path={ckpt_path} does not exist: pass a .ckpt file, `last` or null")
        if problem := checkpoint_problem(path):
            raise UserError(
                f"ckpt_path={ckpt_path} cannot be resumed from: {problem}; pass another checkpoint"
            )
        return str(path)
    folder = Path(output_dir) / "checkpoints"
    last = folder / "last.ckpt"
    others = (
        sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
        if folder.is_dir()
        else []
    )
    bad: list[str] = []
    for candidate in dict.fromkeys([last, atomic.previous(last), *others]):
        if not candidate.exists():
            continue
        if (problem := checkpoint_problem(candidate)) is None:
            if bad:
                log.warning(f"cannot resume from {'; '.join(bad)}; resuming from {candidate}")
            return str(candidate)
        bad.append(f"{candidate} ({problem}, kept as {keep_aside(candidate).name})")
    if bad:
        raise UserError(
            f"no checkpoint of {output_dir} loads: {'; '.join(bad)}. Start over in a new run directory (drop "
            "hydra.run.dir), or in this one with ckpt_path=null; nothing was deleted"
        )
    return None


def keep_aside(path: Path) -> Path:
    """A hard link to a bad checkpoint under a name no resume picks (`<name>.bad-<mtime>`): the run's next save
    replaces `last.ckpt`, the bad file stays for inspection. Idempotent, so every rank may call it."""
    kept = path.with_name(f"{path.name}.bad-{path.stat().st_mtime_ns}")
    try:
        os.link(path, kept)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: leave the file where it is
        return path
    return kept


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way through this rank's shard (see skip_next)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self._skip: tuple[int, int] | None = None

    def skip_next(self, epoch: int, samples: int) -> None:
        """Drop the first `samples` indices of the next iteration, if that iteration is of `epoch`."""
        self._skip = (epoch, samples)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch:
            indices = indices[skip[1] :]
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position in the epoch is part of the checkpoint (Lightning treats train loaders with
    state_dict/load_state_dict as resumable and calls them when saving and restoring the fit loop)."""

    sampler: ResumableSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs sampler=ResumableSampler(...)")
        self._epoch, self._position = 0, 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # Runs at the first next(), after Lightning's set_epoch: the epoch is known here, not at iter().
        epoch, start = self.sampler.epoch, 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            start = self._resume["batches"]
            self.sampler.skip_next(epoch, start * self.batch_size)
        self._resume = None
        self._epoch, self._position = epoch, start
        for batch in super().__iter__():
            self._position += 1
            yield batch


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def resumable_train_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader with its shuffling made resumable (ResumableSampler over this rank's shard, seeded by
    `seed`; a private generator so creating iterators draws nothing from the global one). Loaders this cannot
    rebuild faithfully (custom samplers or batch samplers, iterable datasets, DataLoader subclasses) are
    returned unchanged, with a warning: they resume with the epoch's order replayed from its start."""
    rebuildable = (
        type(loader) is DataLoader
        and loader.batch_size is not None
        and isinstance(loader.sampler, (RandomSampler, SequentialSampler))
    )
    if not rebuildable:
        log.warning(
            f"train loader ({type(loader).__name__}, {type(loader.sampler).__name__}) is not rebuildable: a run "
            "resumed mid-epoch replays that epoch's data order from its start"
        )
        return loader
    world, rank = _world()
    sampler = ResumableSampler(
        loader.dataset,
        num_replicas=world,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
    )
    options: dict[str, Any] = {}
    if loader.num_workers > 0:
        options.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
    return ResumableDataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=torch.Generator().manual_seed(seed),
        in_order=loader.in_order,
        **options,
    )


def make_train_order_resumable(datamodule: L.LightningDataModule, seed: int) -> L.LightningDataModule:
    """Route the datamodule's train loader through resumable_train_loader (the datamodule stays unaware)."""
    if not is_overridden("train_dataloader", datamodule, L.LightningDataModule):
        return datamodule  # no train loader of its own: nothing to wrap (and Lightning's error stays its own)
    build = datamodule.train_dataloader

    @functools.wraps(build)
    def train_dataloader() -> DataLoader:
        return resumable_train_loader(build(), seed)

    datamodule.train_dataloader = train_dataloader  # type: ignore[method-assign]
    return datamodule


def step_seed(seed: int, rank: int, batches: int) -> int:
    """A well-mixed 32-bit seed for (seed, rank, batches trained): distinct streams per rank and per batch."""
    entropy = [seed & 0xFFFFFFFF, rank, batches]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_generators(value: int) -> None:
    """torch (CPU and every CUDA device), numpy and random, all from one value."""
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


class ExactResume(L.Callback):
    """Reseeds the random generators at every point a checkpoint can be taken (train start, the end of each
    batch, of each validation and of each epoch) from (seed, rank, batches trained), so the random stream the
    next batch sees is the same in a resumed run as in an uninterrupted one. Logs where a run resumed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def _reseed(self, trainer: L.Trainer) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        seed_generators(step_seed(self.seed, trainer.global_rank, batches))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning hands a checkpoint's train-loader state to the loader only if it builds the loader after the
        # restore. A module that reads trainer.estimated_stepping_batches in configure_optimizers (the diffusion LR
        # schedule) makes it build the loader before, and the state would be dropped: the resumed epoch would
        # start its data order from the top. Hand it over here, before the epoch's iterator exists (a no-op when
        # Lightning did it already: it clears the pending state).
        trainer.fit_loop._load_combined_loader_states()
        if trainer.ckpt_path:
            in_epoch = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            log.info(
                f"resumed {trainer.ckpt_path} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, {in_epoch} batches into it)"
            )
        self._reseed(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._reseed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._reseed(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reseed(trainer)
