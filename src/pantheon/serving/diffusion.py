"""Serving a Stable-Diffusion-style pipeline folder: text -> base64 PNGs.

`prepare` runs in the launching process before anything binds: it loads the folder (a missing or broken one is a
one-line UserError), reads the model's limits (native and allowed resolutions) and times one denoising step, from
which the request timeout is set above the worst case a full batch can take. `DiffusionAPI` is the LitServe API.
"""

import time
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import litserve as ls
import torch
from fastapi import HTTPException

from pantheon.models.diffusion.checks import inspect_pipeline, side_multiple
from pantheon.serving import metrics
from pantheon.serving.encoding import b64, png
from pantheon.serving.validation import (
    DiffusionLimits,
    DiffusionRequest,
    RequestError,
    remember_tokenizer,
    validate_diffusion,
)
from pantheon.utils.errors import UserError


@dataclass(frozen=True)
class DiffusionModel:
    pipeline: str
    limits: DiffusionLimits
    seconds_per_image_step: float  # measured at the native resolution, guidance on


def load_pipeline(path: str, device: str | torch.device = "cpu"):
    """The pipeline at `path` on `device`, progress bars off; an unloadable folder is a UserError. Its tokenizer
    is remembered for the request checks of this process (prompt length in tokens)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    source = inspect_pipeline(path, field="pipeline").source
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source).to(device)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"pipeline={path} cannot be loaded ({type(err).__name__}: {first[:200]})") from err
    pipe.set_progress_bar_config(disable=True)
    remember_tokenizer(pipe.name_or_path, pipe.tokenizer)
    return pipe


def limits_of(pipe, max_n: int, max_steps: int) -> DiffusionLimits:
    """Sides must survive the VAE's and the UNet's downsampling; up to twice the native side. Prompts must fit
    the text encoder whole (the tokenizer's model_max_length)."""
    multiple = side_multiple(pipe.vae.config, pipe.unet.config)
    native = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    return DiffusionLimits(
        resolution=native,
        multiple=multiple,
        max_resolution=2 * native,
        max_n=max_n,
        max_steps=max_steps,
        default_steps=min(20, max_steps),
        max_prompt_tokens=pipe.tokenizer.model_max_length,
        tokenizer=pipe.name_or_path,
    )


def render(pipe, requests: list[DiffusionRequest]) -> list[torch.Tensor]:
    """uint8 [n, 3, H, W] per request. Requests with equal (steps, guidance, resolution) share one pipeline call;
    each request's noise comes from its own seeded generator, so its images do not depend on its batch mates."""
    out: dict[int, torch.Tensor] = {}
    key = lambda i: (requests[i].steps, requests[i].guidance, requests[i].resolution)  # noqa: E731
    for (steps, guidance, side), members in groupby(sorted(range(len(requests)), key=key), key=key):
        members = list(members)
        generators = [torch.Generator("cpu").manual_seed(requests[i].seed) for i in members]
        images = pipe(
            [requests[i].prompt for i in members for _ in range(requests[i].n)],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=side,
            width=side,
            generator=[g for i, g in zip(members, generators, strict=True) for _ in range(requests[i].n)],
            output_type="pt",
        ).images
        images = images.mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
        for i, chunk in zip(members, torch.split(images, [requests[i].n for i in members]), strict=True):
            out[i] = chunk
    return [out[i] for i in range(len(requests))]


def prepare(path: str, max_n: int, max_steps: int) -> DiffusionModel:
    pipe = load_pipeline(path)
    limits = limits_of(pipe, max_n, max_steps)
    probe = DiffusionRequest("warm-up", 1, 2, limits.default_guidance, 0, limits.resolution)
    render(pipe, [probe])  # the first call pays one-off costs
    start = time.perf_counter()
    render(pipe, [probe])
    return DiffusionModel(path, limits, (time.perf_counter() - start) / probe.steps)


def worst_case_seconds(model: DiffusionModel, max_batch_size: int) -> float:
    """The longest a full batch of the largest requests should take, from the measured step time."""
    limits = model.limits
    area = (limits.max_resolution / limits.resolution) ** 2
    return model.seconds_per_image_step * limits.max_steps * limits.max_n * max_batch_size * area


class DiffusionAPI(ls.LitAPI):
    """POST /predict {"prompt", "n", "steps", "guidance", "seed", "resolution"} -> base64 PNGs and the seed."""

    def __init__(self, model: DiffusionModel, threads: int = 0, **litapi: Any) -> None:
        super().__init__(**litapi)
        self.model, self.threads = model, threads

    def setup(self, device: str) -> None:
        """Load and warm up at the native resolution before LitServe reports the worker ready."""
        metrics.register()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.pipe = load_pipeline(self.model.pipeline, device)
        limits = self.model.limits
        render(self.pipe, [DiffusionRequest("warm-up", 1, 2, limits.default_guidance, 0, limits.resolution)])

    def decode_request(self, request: dict, **kwargs: Any) -> DiffusionRequest:
        """Checked again here (the HTTP middleware already did): the API stays safe without it. The annotation
        is read by LitServe (a JSON body), so this module does not use postponed annotations."""
        try:
            return validate_diffusion(request, self.model.limits)
        except RequestError as err:
            raise HTTPException(status_code=422, detail=str(err)) from None

    def predict(self, x: DiffusionRequest | list[DiffusionRequest], **kwargs: Any) -> Any:
        requests = x if isinstance(x, list) else [x]
        start = time.perf_counter()
        images = render(self.pipe, requests)
        metrics.observe_batch(len(requests), sum(r.n for r in requests), time.perf_counter() - start)
        outputs = list(zip(requests, images, strict=True))
        return outputs if isinstance(x, list) else outputs[0]

    def encode_response(self, output: tuple[DiffusionRequest, torch.Tensor], **kwargs: Any) -> dict[str, Any]:
        request, images = output
        return {**request.to_json(), "images": [b64(png(image)) for image in images]}
