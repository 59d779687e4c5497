"""Load, adapt and save the diffusers parts of a Stable-Diffusion-style model, always in diffusers layout.

Every artefact goes through `from_pretrained` / `save_pretrained` (and diffusers' LoRA format), so what training
reads and writes opens in stock tools: `StableDiffusionPipeline.from_pretrained(dir)`, `pipe.load_lora_weights(dir)`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pantheon.models.diffusion.checks import inspect_pipeline
from pantheon.utils.errors import UserError, require_choice

PREDICTION_TYPES = ("epsilon", "v_prediction")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def load_components(
    name_or_path: str, prediction_type: str | None = None, names: tuple[str, ...] = COMPONENTS
) -> dict:
    """The named parts (unet, vae, text_encoder, tokenizer, training noise scheduler) of a pipeline folder or Hub
    id. `prediction_type` (epsilon | v_prediction) overrides the scheduler's, so exports sample as we trained."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = inspect_pipeline(name_or_path).source
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    if prediction_type is not None:
        require_choice("model.prediction_type", prediction_type, PREDICTION_TYPES)
        scheduler.register_to_config(prediction_type=prediction_type)
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "tokenizer": CLIPTokenizer}  # fmt: skip
    parts = {name: classes[name].from_pretrained(source, subfolder=name) for name in names if name in classes}
    return {**parts, "scheduler": scheduler} if "scheduler" in names else parts


def make_pipeline(components: dict, scheduler=None):
    """A StableDiffusionPipeline over in-memory components (no safety checker: our models, our images)."""
    from diffusers import StableDiffusionPipeline

    parts = {k: components[k] for k in ("unet", "vae", "text_encoder", "tokenizer")}
    return StableDiffusionPipeline(
        **parts,
        scheduler=scheduler or components["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(components: dict, out_dir: str | Path) -> Path:
    """Write a full diffusers pipeline folder (model_index.json + one subfolder per component, safetensors)."""
    out_dir = Path(out_dir)
    make_pipeline(components).save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# --- LoRA (peft adapters on the UNet's attention projections) ---


def add_lora(unet: torch.nn.Module, rank: int, alpha: float | None = None) -> None:
    """Freeze the UNet and inject trainable LoRA adapters (peft) into its attention projections."""
    from peft import LoraConfig

    if rank < 1:
        raise UserError(f"model.lora_rank={rank}: use a rank >= 1, or lora_rank=null for a full fine-tune")
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS)
    )
    unet.add_adapter(config)


def save_lora(unet: torch.nn.Module, out_dir: str | Path) -> Path:
    """The adapters in diffusers' LoRA format: `pipe.load_lora_weights(out_dir)` loads them onto the base model."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    out_dir = Path(out_dir)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=layers, safe_serialization=True)
    return out_dir


def merged_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of a LoRA UNet with the adapters folded into the base weights: a plain UNet for full exports."""
    merged = copy.deepcopy(unet)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def has_lora(unet: torch.nn.Module) -> bool:
    return bool(getattr(unet, "peft_config", None))
