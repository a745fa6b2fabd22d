"""Stand-in data for dry-running the seed spaces that read image folders (DAPT, weight selection)
on a machine without the authors' data: a few tiny PNGs in the layout the space expects. The
spaces keep the authors' paths; the tests point ``data_root`` here with ``--set``."""
from __future__ import annotations

import os

import numpy as np
import yaml


def fake_imagefolder(root: str, classes: int = 2, per_class: int = 2) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
    return root


def fake_mini_imagenet(root: str) -> str:
    """Gidaris' three pickles with one tiny image per class (the space is parsed, never trained)."""
    import pickle

    folder = os.path.join(root, "mini-imagenet")
    os.makedirs(folder, exist_ok=True)
    for split, classes in (("train_phase_train", 64), ("val", 16), ("test", 20)):
        blob = {"data": np.zeros((classes, 84, 84, 3), dtype=np.uint8), "labels": list(range(classes))}
        with open(os.path.join(folder, f"miniImageNet_category_split_{split}.pickle"), "wb") as f:
            pickle.dump(blob, f)
    return root


def local_data_overrides(space_path: str, tmp_dir: str) -> list[str]:
    """``--set`` pairs that point a space's image-folder (or miniImageNet) ``data_root`` at
    stand-in data when the authors' path is not on this machine; none for spaces that need nothing."""
    with open(space_path) as f:
        params = yaml.safe_load(f).get("params", {})
    root = (params.get("dataset_kwargs") or {}).get("data_root")
    if params.get("dataset") == "mini_imagenet" and root and not os.path.isdir(os.path.join(root, "mini-imagenet")):
        return [f"params.dataset_kwargs.data_root={fake_mini_imagenet(os.path.join(tmp_dir, 'mini'))}"]
    if params.get("dataset") != "imagefolder" or not root or os.path.isdir(os.path.join(root, "train")):
        return []
    return [f"params.dataset_kwargs.data_root={fake_imagefolder(os.path.join(tmp_dir, 'imagefolder'))}"]
