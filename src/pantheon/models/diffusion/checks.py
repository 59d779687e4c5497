"""What a Stable-Diffusion-style pipeline can take, checked in one place for training, sampling, serving and export.

Stock diffusers cuts long prompts silently, rounds odd image sides deep inside the VAE, and loads a VAE of the
wrong latent width only to fail in the first convolution. These checks read configs and the tokenizer only, so
each mistake is one UserError line before any weights load. Nothing here imports torch at module level: the
serving HTTP process imports it for the request checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pantheon.utils.errors import UserError
from pantheon.utils.offline import huggingface_hub_reachable

# StableDiffusionPipeline.check_inputs refuses sides that are not a multiple of 8, whatever the VAE.
DIFFUSERS_SIDE_MULTIPLE = 8


def is_hub_id(name_or_path: str) -> bool:
    """`org/name` that is not a local path (Hub ids have at most one slash and no leading ./ or /)."""
    text = str(name_or_path)
    return (
        not Path(text).expanduser().exists() and not text.startswith(("/", ".", "~")) and text.count("/") <= 1
    )


def resolve_pretrained(name_or_path: str, field: str = "model.pretrained_model") -> str:
    """A local diffusers folder, or a Hub id when the Hub answers; anything else is a one-line UserError."""
    if is_hub_id(name_or_path):
        if not huggingface_hub_reachable():
            raise UserError(
                f"{field}={name_or_path} is a Hugging Face Hub id but the Hub is unreachable (offline): set "
                f"{field}=<local diffusers folder with model_index.json> and data.data_dir=<image folder with "
                "metadata.jsonl>, or train experiment=flowers_sd_tiny, which builds everything offline"
            )
        return str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not (path / "model_index.json").is_file():
        what = (
            "does not exist"
            if not path.exists()
            else "has no model_index.json (not a diffusers pipeline folder)"
        )
        raise UserError(
            f"{field}={name_or_path} {what}: point it at a folder saved by save_pretrained or a Hub id"
        )
    return str(path)


def vae_factor(vae_config: Mapping[str, Any]) -> int:
    """Pixels per latent pixel: the autoencoder halves the image side once per block after the first."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def side_multiple(vae_config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> int:
    """Image sides the whole pipeline takes without rounding: through the VAE, then the UNet's own downsampling,
    and a multiple of diffusers' 8."""
    unet_factor = 2 ** (len(unet_config["block_out_channels"]) - 1)
    return math.lcm(DIFFUSERS_SIDE_MULTIPLE, vae_factor(vae_config) * unet_factor)


@dataclass(frozen=True)
class PipelineInfo:
    """A checked pipeline: where it is and the image sides it takes, known before its weights load."""

    source: str  # the local folder or Hub id to pass to from_pretrained
    vae_factor: int  # what training images (data.resolution) must be a multiple of
    side_multiple: int  # what sampled images (size, resolution) must be a multiple of


def read_config(cls: Any, source: str, subfolder: str | None, where: str) -> dict[str, Any]:
    try:
        return dict(cls.load_config(source, subfolder=subfolder))
    except (OSError, ValueError) as err:
        file = f"{subfolder}/{cls.config_name}" if subfolder else cls.config_name
        raise UserError(f"{where}: {file} cannot be read ({str(err).splitlines()[0][:160]})") from err


def inspect_pipeline(name_or_path: str, field: str = "model.pretrained_model") -> PipelineInfo:
    """Every loader's first step: the folder exists, names a VAE that is there, and the VAE's latents are as wide
    as the UNet's input. Reads JSON configs only (for a Hub id, downloads them)."""
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

    source = resolve_pretrained(name_or_path, field)
    where = f"{field}={name_or_path}"
    entry = read_config(DiffusionPipeline, source, None, where).get("vae")
    if not entry or entry[0] is None:
        raise UserError(
            f"{where}: model_index.json names no vae, and a Stable Diffusion pipeline needs its autoencoder: "
            "point it at a full pipeline folder (save_pretrained writes vae/)"
        )
    if not is_hub_id(source) and not (Path(source) / "vae" / "config.json").is_file():
        raise UserError(
            f"{where} has no vae/ subfolder (model_index.json names one): copy the pipeline's vae/ folder "
            "back, or point it at a full pipeline folder"
        )
    vae = read_config(AutoencoderKL, source, "vae", where)
    unet = read_config(UNet2DConditionModel, source, "unet", where)
    if vae["latent_channels"] != unet["in_channels"]:
        raise UserError(
            f"{where}: its VAE makes {vae['latent_channels']}-channel latents (vae latent_channels) but its "
            f"UNet takes {unet['in_channels']} (unet in_channels): put back the VAE this UNet was trained with"
        )
    return PipelineInfo(source, vae_factor(vae), side_multiple(vae, unet))


def nearest_sides(value: int, multiple: int, largest: int | None = None) -> list[int]:
    """The valid sides on either side of `value` (the multiples of `multiple`, from `multiple` to `largest`)."""
    below = value // multiple * multiple
    return [s for s in (below, below + multiple) if s >= multiple and (largest is None or s <= largest)]


def check_side(field: str, value: int | None, multiple: int, whose: str) -> None:
    """An image side the autoencoder (and UNet) cannot take whole: one line with the nearest sides that work."""
    if value is None or (value >= multiple and value % multiple == 0):
        return
    use = " or ".join(f"{field}={side}" for side in nearest_sides(value, multiple))
    raise UserError(f"{field}={value}: {whose} needs a multiple of {multiple} pixels: use {use}")


def token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    """Tokens per text with the start and end tokens, uncut (verbose=False: no warning of its own)."""
    return [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False).input_ids]


def prompt_excess(tokenizer: Any, prompt: str) -> str | None:
    """Why the text encoder cannot take `prompt` whole, or None. The pipeline would cut the rest off silently."""
    limit = tokenizer.model_max_length
    (count,) = token_counts(tokenizer, [prompt])
    return f"is {count} tokens, the text encoder takes at most {limit}: shorten it" if count > limit else None


def check_prompt(tokenizer: Any, prompt: str, field: str = "prompt") -> None:
    excess = prompt_excess(tokenizer, prompt)
    if excess:
        raise UserError(f"{field} {excess}")
