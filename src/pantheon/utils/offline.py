"""Network detection that never hangs: every online path checks here first and falls back offline."""

from __future__ import annotations

import functools
import os
import socket

_TRUTHY = {"1", "true", "yes", "on"}


def offline_forced() -> bool:
    """True when the user or the platform asked for offline mode (PANTHEON_OFFLINE, HF_HUB_OFFLINE)."""
    return any(os.environ.get(var, "").lower() in _TRUTHY for var in ("PANTHEON_OFFLINE", "HF_HUB_OFFLINE"))


@functools.lru_cache(maxsize=32)
def host_reachable(host: str, port: int = 443, timeout_s: float = 2.0) -> bool:
    """One TCP connect with a short timeout; cached so a run asks each host once."""
    if offline_forced():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def huggingface_hub_reachable() -> bool:
    """Whether Hub ids can be resolved now (used before any `from_pretrained` of a Hub id)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    return host_reachable(endpoint)
