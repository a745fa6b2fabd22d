"""How much disk a sweep uses: its checkpoints (Tune trial folders and Train runs, under
``<storage>/<name>`` and ``<storage>/<name>-reference``) and the shared artifact cache. Printed at
the end of a sweep and logged on the MLflow parent run, so growth is noticed before the disk fills.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DiskUsage:
    checkpoint_bytes: int
    checkpoints: int
    other_bytes: int  # results, logs, experiment state
    cache_bytes: int

    def line(self) -> str:
        return (f"disk: {human(self.checkpoint_bytes)} in {self.checkpoints} checkpoints, "
                f"{human(self.other_bytes)} of results and logs, {human(self.cache_bytes)} of cache")

    def metrics(self) -> dict[str, float]:
        return {"disk_checkpoint_bytes": float(self.checkpoint_bytes), "disk_checkpoints": float(self.checkpoints),
                "disk_results_bytes": float(self.other_bytes), "disk_cache_bytes": float(self.cache_bytes)}


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _files(uri: str):
    import pyarrow.fs as pafs

    from orchestrator.store.cache import resolve_filesystem

    fs, path = resolve_filesystem(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [(i.path[len(path):], i.size or 0) for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]


def disk_usage(sweep_dirs: list[str], cache_root: str) -> DiskUsage:
    ckpt_bytes = other = 0
    checkpoints: set[tuple[str, str]] = set()
    for root in sweep_dirs:
        for rel, size in _files(root):
            parts = rel.strip("/").split("/")
            folder = next((i for i, p in enumerate(parts[:-1]) if p.startswith("checkpoint_")), None)
            if folder is None:
                other += size
            else:
                ckpt_bytes += size
                checkpoints.add((root, "/".join(parts[:folder + 1])))
    cache = sum(size for _, size in _files(cache_root))
    return DiskUsage(ckpt_bytes, len(checkpoints), other, cache)
