"""DeepSpeed ZeRO checkpoints -> one fp32 Lightning checkpoint that every other tool opens.

Under trainer=deepspeed_stage_{2,3}* a checkpoint (last.ckpt included) is a directory of per-rank shards in the
training precision. Consolidation gathers the shards into full fp32 weights, with the rest of the Lightning
checkpoint (hyperparameters, loops, callbacks such as EMA), into a single file:
`load_module()`, `python -m pantheon.export ckpt=<file>` (diffusers pipeline) and `pantheon.sample` read it
like any other checkpoint. CPU only, no process group: run it anywhere after training.

    python -m pantheon.cluster.deepspeed <run dir>/checkpoints/last.ckpt [<out>.ckpt]
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from pantheon.utils import atomic
from pantheon.utils.errors import UserError, exit_on_user_error


def is_zero_checkpoint(path: str | Path) -> bool:
    """A DeepSpeed checkpoint directory (Lightning's layout: `latest` naming the tag folder of shards)."""
    path = Path(path)
    return path.is_dir() and (path / "latest").is_file()


def consolidated_path(checkpoint_dir: str | Path) -> Path:
    """Where consolidate_checkpoint writes by default: `last.ckpt` -> `last.fp32.ckpt` beside it."""
    checkpoint_dir = Path(checkpoint_dir)
    return checkpoint_dir.with_name(f"{checkpoint_dir.name.removesuffix('.ckpt')}.fp32.ckpt")


def consolidate_checkpoint(checkpoint_dir: str | Path, output_file: str | Path | None = None) -> Path:
    """Gather a ZeRO-2/3 checkpoint directory into one fp32 checkpoint file (written atomically); returns it."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    checkpoint_dir = Path(checkpoint_dir)
    if not is_zero_checkpoint(checkpoint_dir):
        raise UserError(f"{checkpoint_dir} is not a DeepSpeed checkpoint directory (no `latest` file in it)")
    output = Path(output_file) if output_file else consolidated_path(checkpoint_dir)
    with (
        atomic.publish(output) as staging,
        contextlib.redirect_stdout(io.StringIO()),
    ):  # it prints every shard
        convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint_dir), str(staging))
    return output


@exit_on_user_error
def main(argv: list[str] | None = None) -> Path:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        raise UserError(
            "usage: python -m pantheon.cluster.deepspeed <deepspeed checkpoint dir> [<output>.ckpt]"
        )
    output = consolidate_checkpoint(*args)
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
