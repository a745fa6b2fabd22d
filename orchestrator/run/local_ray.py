"""A local Ray that Ray's own address discovery can find, even with other Ray instances on the
machine (two sweeps on one workstation, several developers on one server).

Ray Train's ``PlacementGroupCleaner`` (a detached actor that frees a worker group's placement
group when its controller dies, for example when ASHA stops a trial) calls the State API without
an address. With a local ``ray.init()`` nothing records the address, so the State API scans for
running GCS processes and fails with "Found multiple active Ray instances" as soon as there is a
second one; every early-stopped DDP trial then leaks its placement group and the sweep can
dead-lock (observed here: the watchdog test on a shared machine). So the sweep gives its local Ray
a temp dir of its own (``RAY_TMPDIR``, inherited by every Ray process it starts) and writes the GCS
address where discovery looks first, inside that dir, where no other Ray reads it.
"""
from __future__ import annotations

import os
import tempfile


def prepare_local_ray() -> str | None:
    """Before ``ray.init()`` of a local Ray: a private ``RAY_TMPDIR`` (unless the user set one,
    which is then theirs to keep private). Returns the dir it created."""
    if os.environ.get("RAY_TMPDIR"):
        return None
    # Short and under /tmp: Ray puts unix sockets under it, and their paths are length-limited.
    own = tempfile.mkdtemp(prefix="w2s-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    os.environ["RAY_TMPDIR"] = own
    return own


def publish_address(own_dir: str | None) -> None:
    """After ``ray.init()``: record the GCS address in the private temp dir."""
    if not own_dir:
        return
    import ray

    try:
        from ray._private.utils import write_ray_address  # what `ray start` does; private but stable

        write_ray_address(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - without it only the leak protection above is lost
        pass
    print(f"  local Ray: temp dir {own_dir} (logs in {own_dir}/ray/session_latest/logs)", flush=True)
