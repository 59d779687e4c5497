"""Rank-zero logging: on a cluster only global rank 0 speaks, unless a message asks for every rank."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


class RankedLogger(logging.LoggerAdapter):
    """A logger whose messages are emitted by rank 0 only (pass `rank_zero_only=False` to log on every rank)."""

    def __init__(self, name: str = __name__, rank_zero_only: bool = True) -> None:
        super().__init__(logging.getLogger(name), extra={})
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: object, *args, rank_zero_only: bool | None = None, **kwargs) -> None:
        if not self.isEnabledFor(level):
            return
        only_zero = self.rank_zero_only if rank_zero_only is None else rank_zero_only
        rank = getattr(rank_zero_only_fn, "rank", 0)
        if only_zero and rank != 0:
            return
        msg, kwargs = self.process(msg, kwargs)
        prefix = "" if only_zero else f"[rank {rank}] "
        self.logger.log(level, f"{prefix}{msg}", *args, **kwargs)


rank_zero_only_fn = rank_zero_only
