"""A tiny Stable-Diffusion-style pipeline built offline, so the diffusion experiment runs on a bare CPU machine.

Same layout and classes as Stable Diffusion 1.x (UNet2DConditionModel, AutoencoderKL with 4 latent channels,
CLIPTextModel + CLIPTokenizer, DDPMScheduler), only small and randomly initialised. The tokenizer is the real CLIP
BPE vocabulary that open_clip_torch ships, so token ids match CLIP's. The build is seeded (the same folder on every
machine) and written with `save_pretrained`: training then loads it through the same `from_pretrained` path as a
Hub model.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import torch

from pantheon.utils import atomic
from pantheon.utils.errors import UserError
from pantheon.utils.logging import RankedLogger

log = RankedLogger(__name__)

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of the BPE file


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny pipeline: ~1M parameters in the UNet; a 64 px image is a 4x16x16 latent."""

    resolution: int = 64
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    vae_channels: tuple[int, ...] = (32, 64, 64)
    text_width: int = 32
    text_layers: int = 2
    seed: int = 0


def clip_bpe_path() -> Path:
    try:
        import open_clip
    except ImportError as err:
        raise UserError(
            "the tiny pipeline needs open_clip_torch for the CLIP vocabulary: pip install open_clip_torch"
        ) from err
    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (GPT-2 / open_clip)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_clip_tokenizer():
    """A CLIPTokenizer with CLIP's 49,408 ids, from open_clip's BPE file (no Hub)."""
    from transformers import CLIPTokenizer

    lines = gzip.decompress(clip_bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), CLIP_BOS, CLIP_EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    # transformers 5: vocab=dict and merges=list of pairs (vocab_file=/merges_file= are silently ignored).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_tiny_components(spec: TinySpec = TinySpec()) -> dict:
    """The five pipeline components, seeded; the VAE's scaling factor gives its latents unit variance."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer()
    torch.manual_seed(spec.seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(spec.vae_channels),
        up_block_types=["UpDecoderBlock2D"] * len(spec.vae_channels),
        block_out_channels=list(spec.vae_channels),
        latent_channels=4,
        norm_num_groups=min(32, spec.vae_channels[0]),
        sample_size=spec.resolution,
    )
    latent_size = spec.resolution // 2 ** (len(spec.vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=spec.unet_channels,
        layers_per_block=spec.layers_per_block,
        down_block_types=("DownBlock2D", *["CrossAttnDownBlock2D"] * (len(spec.unet_channels) - 1)),
        up_block_types=(*["CrossAttnUpBlock2D"] * (len(spec.unet_channels) - 1), "UpBlock2D"),
        cross_attention_dim=spec.text_width,
        attention_head_dim=8,
        norm_num_groups=min(32, spec.unet_channels[0]),
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_width,
            intermediate_size=4 * spec.text_width,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, clip_sample=False,
    )  # fmt: skip
    with torch.no_grad():  # smooth seeded images in [-1, 1] stand in for data when measuring the latent scale
        probe = torch.nn.functional.interpolate(torch.rand(8, 3, 8, 8), size=spec.resolution, mode="bilinear")
        latents = vae.encode(probe * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=round(1.0 / latents.std().item(), 5))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def ensure_tiny_pipeline(path: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """The tiny pipeline folder at `path`, built there first when missing. Ranks that race here all write the
    same seeded files into private staging folders; the first to finish publishes, the others discard theirs."""
    from pantheon.models.diffusion.components import save_pipeline

    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    log.info(f"building the tiny diffusion pipeline (offline, seeded) in {path}")
    with atomic.publish(path, directory=True, keep_existing=True) as staging:
        save_pipeline(build_tiny_components(spec), staging)
    return path
