"""Fail-fast network checks for downloads (weights, datasets): the cluster may have no internet,
and library download code retries or waits on sockets for a long time before giving up."""
from __future__ import annotations

import os
import socket
import time

OFFLINE_ENV_VARS = ("W2S_OFFLINE", "HF_HUB_OFFLINE")


def offline_mode() -> bool:
    """``W2S_OFFLINE=1`` (or Hugging Face's ``HF_HUB_OFFLINE=1``) forbids every download."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV_VARS)


# host, port -> (when probed, reachable). A pre-flight asks about the same host once per model and
# candidate trial; behind a firewall that drops packets each probe costs the whole timeout.
_PROBED: dict[tuple[str, int], tuple[float, bool]] = {}
PROBE_TTL_S = 30.0


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout``; an answer is reused for
    :data:`PROBE_TTL_S` seconds."""
    now = time.monotonic()
    seen = _PROBED.get((host, port))
    if seen is not None and now - seen[0] < PROBE_TTL_S:
        return seen[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _PROBED[(host, port)] = (time.monotonic(), ok)
    return ok
