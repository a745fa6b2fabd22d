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
    sets = []
    pipeline = ((params.get("synthetic") or {}).get("generation") or {}).get("pipeline")
    if pipeline and not os.path.isdir(pipeline):
        sets.append(f"params.synthetic.generation.pipeline={fake_pipeline(os.path.join(tmp_dir, 'pipeline'))}")
    root = (params.get("dataset_kwargs") or {}).get("data_root")
    if params.get("dataset") == "mini_imagenet" and root and not os.path.isdir(os.path.join(root, "mini-imagenet")):
        return sets + [f"params.dataset_kwargs.data_root={fake_mini_imagenet(os.path.join(tmp_dir, 'mini'))}"]
    fakes = {"imagefolder": ("train", fake_imagefolder), "dtd": ("dtd", fake_dtd),
             "caltech101": ("caltech101", fake_caltech101)}
    if params.get("dataset") not in fakes or not root:
        return sets
    inside, make = fakes[params["dataset"]]
    if os.path.isdir(os.path.join(root, inside)):
        return sets
    return sets + [f"params.dataset_kwargs.data_root={make(os.path.join(tmp_dir, params['dataset']))}"]


def fake_pipeline(folder: str) -> str:
    """What the parse-time check of a generation pipeline reads: a folder with model_index.json."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        f.write('{"_class_name": "StableDiffusionPipeline"}')
    return folder


def fake_dtd(root: str) -> str:
    """DTD's official layout: images/<class>/ and labels/{train,val,test}1.txt."""
    fake_imagefolder(os.path.join(root, "stage"))
    os.makedirs(os.path.join(root, "dtd", "labels"), exist_ok=True)
    os.replace(os.path.join(root, "stage", "train"), os.path.join(root, "dtd", "images"))
    for split in ("train", "val", "test"):
        with open(os.path.join(root, "dtd", "labels", f"{split}1.txt"), "w") as f:
            f.write("class0/0.png\nclass1/0.png\n")
    return root


def fake_caltech101(root: str) -> str:
    """Caltech-101's layout: caltech101/101_ObjectCategories/<class>/."""
    fake_imagefolder(os.path.join(root, "stage"))
    os.makedirs(os.path.join(root, "caltech101"), exist_ok=True)
    os.replace(os.path.join(root, "stage", "train"), os.path.join(root, "caltech101", "101_ObjectCategories"))
    return root
