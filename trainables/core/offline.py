"""Fail-fast network checks for downloads (weights, datasets): the cluster may have no internet,
and library download code retries or waits on sockets for a long time before giving up."""
from __future__ import annotations

import os
import socket

OFFLINE_ENV_VARS = ("W2S_OFFLINE", "HF_HUB_OFFLINE")


def offline_mode() -> bool:
    """``W2S_OFFLINE=1`` (or Hugging Face's ``HF_HUB_OFFLINE=1``) forbids every download."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV_VARS)


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
