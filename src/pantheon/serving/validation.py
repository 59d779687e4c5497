"""Request checking for /predict: each field's type and range, so a bad request is a 4xx naming the field.

The checks run in the HTTP process, before a request reaches the inference worker: LitServe decodes a whole batch
together, so one bad request decoded there would fail every request batched with it.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

from pantheon.models.diffusion.checks import nearest_sides, prompt_excess

FORMATS = ("png", "npy")
SEED_MAX = 2**31 - 1


class RequestError(ValueError):
    """A request field that is missing, of the wrong type or out of range; `str()` is the client's message."""

    def __init__(self, field: str, message: str, allowed: str) -> None:
        super().__init__(f"{field}: {message}; allowed: {allowed}")
        self.field, self.allowed = field, allowed

    def as_json(self) -> dict[str, str]:
        return {"error": str(self), "field": self.field, "allowed": self.allowed}


@dataclass(frozen=True)
class GanLimits:
    max_n: int = 64


@dataclass(frozen=True)
class DiffusionLimits:
    resolution: int = 64  # the pipeline's native image side, the default
    multiple: int = 8  # sides must be a multiple of this (VAE and UNet downsampling)
    max_resolution: int = 128
    max_n: int = 4
    max_steps: int = 50
    default_steps: int = 20
    max_guidance: float = 20.0
    default_guidance: float = 7.5
    max_prompt_chars: int = 500
    max_prompt_tokens: int | None = None  # the text encoder's limit, start and end tokens included
    tokenizer: str | None = None  # the pipeline whose tokenizer counts prompt tokens (None: not counted)


@dataclass(frozen=True)
class GanRequest:
    digit: int
    n: int
    seed: int
    format: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DiffusionRequest:
    prompt: str
    n: int
    steps: int
    guidance: float
    seed: int
    resolution: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _object(payload: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise RequestError(
            "body", f"a JSON {type(payload).__name__} is not an object", "{" + ", ".join(fields) + "}"
        )
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        raise RequestError(unknown[0], "is not a field of this API", ", ".join(fields))
    return payload


def _int(
    payload: dict, field: str, low: int, high: int, default: int | None = None, allowed: str = ""
) -> int:
    """An integer in [low, high]; JSON true/false and 5.0 are refused (bool is an int in Python)."""
    allowed = allowed or f"integer {low}..{high}"
    if field not in payload or payload[field] is None:
        if default is None:
            raise RequestError(field, "is required", allowed)
        return default
    value = payload[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"{json_repr(value)} is not an integer", allowed)
    if not low <= value <= high:
        raise RequestError(field, f"{value} is out of range", allowed)
    return value


def _float(payload: dict, field: str, low: float, high: float, default: float) -> float:
    allowed = f"number {low:g}..{high:g}"
    value = payload.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
        raise RequestError(field, f"{json_repr(value)} is not a number", allowed)
    if not low <= value <= high:
        raise RequestError(field, f"{value:g} is out of range", allowed)
    return float(value)


def _seed(payload: dict) -> int:
    """The request's seed, or a fresh one that the response reports, so every output can be reproduced."""
    if payload.get("seed") is None:
        return random.SystemRandom().randint(0, SEED_MAX)
    return _int(payload, "seed", 0, SEED_MAX)


# pipeline -> its loaded tokenizer, so the checks in each process reuse the pipeline's own (see tokenizer_of)
_TOKENIZERS: dict[str, Any] = {}


def remember_tokenizer(pipeline: str, tokenizer: Any) -> None:
    _TOKENIZERS[pipeline] = tokenizer


def tokenizer_of(pipeline: str) -> Any:
    """The tokenizer of `pipeline`: the one its loader remembered, else read from the folder once."""
    if pipeline not in _TOKENIZERS:
        from transformers import CLIPTokenizer

        _TOKENIZERS[pipeline] = CLIPTokenizer.from_pretrained(pipeline, subfolder="tokenizer")
    return _TOKENIZERS[pipeline]


def json_repr(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 40 else text[:37] + "..."


def validate_gan(payload: Any, limits: GanLimits) -> GanRequest:
    """{"digit": 0-9, "n": 1..max_n (default 1), "seed": optional, "format": "png" | "npy" (default png)}."""
    body = _object(payload, ("digit", "n", "seed", "format"))
    fmt = body.get("format", "png")
    if fmt not in FORMATS:
        raise RequestError(
            "format", f"{json_repr(fmt)} is not a format", " | ".join(f'"{f}"' for f in FORMATS)
        )
    return GanRequest(
        digit=_int(body, "digit", 0, 9),
        n=_int(body, "n", 1, limits.max_n, default=1),
        seed=_seed(body),
        format=fmt,
    )


def validate_diffusion(payload: Any, limits: DiffusionLimits) -> DiffusionRequest:
    """{"prompt": non-empty text, "n", "steps", "guidance", "seed", "resolution"}; all but prompt optional."""
    body = _object(payload, ("prompt", "n", "steps", "guidance", "seed", "resolution"))
    prompt_allowed = f"non-empty text of at most {limits.max_prompt_chars} characters"
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError(
            "prompt", "is required" if prompt is None else f"{json_repr(prompt)} is not text", prompt_allowed
        )
    if not prompt.strip() or len(prompt) > limits.max_prompt_chars:
        raise RequestError(
            "prompt", "is empty" if not prompt.strip() else f"has {len(prompt)} characters", prompt_allowed
        )
    if limits.tokenizer is not None:  # the pipeline would cut a longer prompt silently
        excess = prompt_excess(tokenizer_of(limits.tokenizer), prompt)
        if excess:
            raise RequestError("prompt", excess, f"text of at most {limits.max_prompt_tokens} tokens")
    sides = f"multiples of {limits.multiple} from {limits.multiple} to {limits.max_resolution}"
    resolution = _int(body, "resolution", limits.multiple, limits.max_resolution, limits.resolution, sides)
    if resolution % limits.multiple:
        nearest = " or ".join(map(str, nearest_sides(resolution, limits.multiple, limits.max_resolution)))
        raise RequestError(
            "resolution", f"{resolution} is not a multiple of {limits.multiple}: use {nearest}", sides
        )
    return DiffusionRequest(
        prompt=prompt,
        n=_int(body, "n", 1, limits.max_n, default=1),
        steps=_int(body, "steps", 1, limits.max_steps, default=limits.default_steps),
        guidance=_float(body, "guidance", 0.0, limits.max_guidance, default=limits.default_guidance),
        seed=_seed(body),
        resolution=resolution,
    )
