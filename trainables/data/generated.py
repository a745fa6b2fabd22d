"""Synthetic training images from a text-to-image diffusion pipeline (DAPT's third experiment,
``sample_stable_diff.py`` + ``generated_distill.py``), and the real + synthetic training set.

* :class:`GenerationRecipe`: the pipeline (a local folder or a Hugging Face Hub id already in the
  hub cache; nothing is ever downloaded), the class names and the prompt template, images per
  class, seed, steps, guidance, image size. Checked at parse time: missing weights say where to
  put them.
* :func:`generation_recipe`: the cache key's fields: the pipeline weights' digest, every prompt,
  the seeds, steps, guidance, size and precision. ``batch_size`` is left out: each image has its
  own seeded generator, so batching does not change the images.
* :func:`generate_images`: the generation pass, run as a cache entry's build (written to a private
  scratch folder and published whole by the artifact cache, so a half-written set is never taken
  as complete); bf16 and batches on CUDA, progress lines with an ETA.
* :func:`with_generated`: the real split's training set concatenated with the first
  ``synset_size`` generated images of every class (or those alone), validation and test untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from trainables.core.config import StrictModel
from trainables.core.digest import file_digest
from trainables.data.base import DatasetSplits
from trainables.data.class_names import CLASS_NAMES, DEFAULT_PROMPT, PROMPTS

MANIFEST = "generated.json"
IMAGES = "images"


class GenerationError(ValueError):
    """A generated set that cannot be used (bad pipeline folder, missing or corrupt images)."""


class PipelineMissing(GenerationError):
    """The pipeline's weights are not on this machine: not a bad parameter, a missing input (a real run
    refuses before Ray starts, a dry run lists it), like a dataset that is not there."""


def _hub_snapshot(repo: str) -> str | None:
    """The local snapshot folder of hub repo ``repo`` if it is in the hub cache, else None (never
    downloads: generation weights are gigabytes, fetched by the user once, not by a sweep)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_pipeline(pipeline: str) -> str:
    """The folder holding pipeline ``pipeline`` (a path, or a hub id in the hub cache), checked to
    be a diffusers pipeline (``model_index.json``)."""
    path = os.path.expanduser(pipeline)
    if os.path.isabs(path) or os.path.exists(path):
        if not os.path.isdir(path):
            raise PipelineMissing(f"generation.pipeline: {pipeline} does not exist; put the diffusers pipeline "
                                  f"folder there (e.g. `hf download CompVis/stable-diffusion-v1-4 --local-dir "
                                  f"{pipeline}` on a machine with network)")
    else:
        snapshot = _hub_snapshot(pipeline)
        if snapshot is None:
            from huggingface_hub import constants

            raise PipelineMissing(f"generation.pipeline: {pipeline!r} is neither a folder nor in the Hugging Face "
                                  f"hub cache ({constants.HF_HUB_CACHE}); run `hf download {pipeline}` where there "
                                  f"is network (same HF_HOME), or set generation.pipeline to an absolute folder")
        path = snapshot
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise GenerationError(f"generation.pipeline: {path} is not a diffusers pipeline (no model_index.json); "
                              f"give the folder written by DiffusionPipeline.save_pretrained or `hf download`")
    return path


def pipeline_digest(folder: str) -> str:
    """SHA-256 over the pipeline folder's files (relative path and content digest). Hub snapshots
    link to blobs named by their content hash, so those are read from the link, not hashed again."""
    h = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            target = os.path.realpath(full)
            blob = os.path.basename(target)
            content = blob if os.path.islink(full) and len(blob) == 64 else file_digest(target)
            h.update(f"{os.path.relpath(full, folder)}\0{content}\n".encode())
    return h.hexdigest()


class GenerationRecipe(StrictModel):
    """How the synthetic images are made. Everything but ``batch_size`` names the images."""

    pipeline: str = Field(..., description="diffusers pipeline: an absolute folder, or a hub id already in the "
                          "Hugging Face cache (never downloaded)")
    classes: str | list[str] = Field(..., description="class names in label order, or a preset: "
                                     + " | ".join(CLASS_NAMES))
    prompt: str | None = Field(None, description="prompt template, {} = class name; default DAPT's template for "
                               "the preset (else 'a picture of a {}')")
    images_per_class: int = Field(80, ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    steps: int = Field(50, ge=1, le=1000, description="denoising steps (DAPT: the pipeline default, 50)")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance (DAPT: the default, 7.5)")
    image_size: int = Field(512, ge=8, le=2048, description="generated image side (SD v1-4: 512)")
    batch_size: int = Field(5, ge=1, description="images per pipeline call (DAPT: 5); not part of the key")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on CUDA, fp32 on CPU")

    @field_validator("classes")
    @classmethod
    def _classes_named(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str):
            if v not in CLASS_NAMES:
                raise ValueError(f"unknown class preset {v!r}; give a list of class names or one of "
                                 f"{', '.join(CLASS_NAMES)}")
            return v
        blank = [i for i, c in enumerate(v) if not str(c).strip()]
        if not v or blank:
            raise ValueError("the prompts need a name for every class: " + (
                "the list is empty" if not v else f"class {blank[0]} has an empty name"))
        if len(set(v)) != len(v):
            raise ValueError("class names must be distinct (each names a folder of generated images)")
        return v

    @model_validator(mode="after")
    def _prompt_and_weights(self):
        if "{}" not in self.template:
            raise ValueError(f"generation.prompt must contain {{}} where the class name goes, got {self.prompt!r}")
        try:
            resolve_pipeline(self.pipeline)
        except PipelineMissing:
            pass  # reported by the trainable's check_available hook (see PipelineMissing)
        except GenerationError as exc:
            raise ValueError(str(exc).removeprefix("generation.pipeline: ")) from None
        return self

    @property
    def names(self) -> list[str]:
        return list(CLASS_NAMES[self.classes]) if isinstance(self.classes, str) else list(self.classes)

    @property
    def template(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return PROMPTS.get(self.classes, DEFAULT_PROMPT) if isinstance(self.classes, str) else DEFAULT_PROMPT

    def prompts(self) -> list[str]:
        return [self.template.format(c) for c in self.names]


def generation_recipe(g: GenerationRecipe) -> dict[str, Any]:
    """The generated set's cache-key fields: what the images are, not where the weights lie."""
    return {"pipeline_sha256": pipeline_digest(resolve_pipeline(g.pipeline)), "prompts": g.prompts(),
            "images_per_class": g.images_per_class, "seed": g.seed, "steps": g.steps,
            "guidance_scale": g.guidance_scale, "image_size": g.image_size, "precision": g.precision}


def image_seed(seed: int, class_index: int, image_index: int) -> int:
    """One generator per image, so an image does not depend on the batch it was made in."""
    return (seed * 1_000_003 + class_index * 100_003 + image_index) % 2**63


def _folder(class_index: int, name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    return f"{class_index:04d}_{safe}"


class _Progress:
    """``generation: done/total images (pct), rate, eta`` on stderr, at most every ``every_s``."""

    def __init__(self, total: int, every_s: float = 10.0):
        self.total, self.every_s, self.t0, self.last = total, every_s, time.time(), 0.0

    def update(self, done: int) -> None:
        now = time.time()
        if done < self.total and now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"  generation: {done}/{self.total} images ({100 * done / self.total:.0f}%), {rate:.2f} img/s, "
              f"eta {eta:.0f}s", file=sys.stderr, flush=True)


def load_pipeline(g: GenerationRecipe, device: torch.device):
    from diffusers import DiffusionPipeline

    folder = resolve_pipeline(g.pipeline)
    dtype = torch.bfloat16 if (g.precision == "bf16" or (g.precision == "auto" and device.type == "cuda")) \
        else torch.float32
    with open(os.path.join(folder, "model_index.json")) as f:
        components = json.load(f)
    # DAPT turns the safety checker off (it blanks images it flags, which would be training data).
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in components else {}
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise GenerationError(f"generation.pipeline: {folder} could not be loaded as a diffusers pipeline "
                              f"({type(exc).__name__}: {exc})") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), dtype


def generate_images(g: GenerationRecipe, out_dir: str, device: torch.device | None = None) -> dict[str, Any]:
    """Generate ``images_per_class`` PNGs per class into ``out_dir/images/<NNNN_name>/<j>.png``
    and write the manifest ``generated.json``. Run as an artifact-cache build."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe, dtype = load_pipeline(g, device)
    prompts, names, n = g.prompts(), g.names, g.images_per_class
    progress = _Progress(len(names) * n)
    done = 0
    for c, (name, prompt) in enumerate(zip(names, prompts)):
        folder = os.path.join(out_dir, IMAGES, _folder(c, name))
        os.makedirs(folder, exist_ok=True)
        for start in range(0, n, g.batch_size):
            count = min(g.batch_size, n - start)
            # CPU generators: the same seeds give the same starting noise on any device.
            gens = [torch.Generator().manual_seed(image_seed(g.seed, c, start + k)) for k in range(count)]
            images = pipe([prompt] * count, num_inference_steps=g.steps, guidance_scale=g.guidance_scale,
                          height=g.image_size, width=g.image_size, generator=gens, output_type="pil").images
            for k, image in enumerate(images):
                image.save(os.path.join(folder, f"{start + k:05d}.png"))
            done += count
            progress.update(done)
    meta = {"classes": names, "folders": [_folder(c, name) for c, name in enumerate(names)], "prompts": prompts,
            "images_per_class": n, "image_size": g.image_size, "dtype": str(dtype).removeprefix("torch."),
            "device": device.type}
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _decode(path: str, size: tuple[int, int], channels: int) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    try:
        image = decode_image(path, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
    except RuntimeError as exc:
        raise GenerationError(f"generated image {path} cannot be decoded ({exc}); delete its cache entry "
                              f"to generate the set again") from None
    # Resize the shorter side, then centre-crop: the real images' test-time view (generated sets are square).
    image = TF.center_crop(TF.resize(image, [min(size)], antialias=True), list(size))
    return image.float() / 255.0


def load_generated(folder: str, synset_size: int, input_shape: tuple[int, ...], mean, std,
                   num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``synset_size`` generated images of every class from a generated set's folder,
    decoded to ``input_shape`` and normalised like the real images."""
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        raise GenerationError(f"{folder} holds no finished generated set (no {MANIFEST})")
    with open(manifest) as f:
        meta = json.load(f)
    if synset_size > meta["images_per_class"]:
        raise GenerationError(f"synthetic.synset_size: {synset_size} images per class asked, but the generated "
                              f"set holds {meta['images_per_class']} (raise generation.images_per_class)")
    if len(meta["classes"]) != num_classes:
        raise GenerationError(f"synthetic.generation.classes: {len(meta['classes'])} classes generated, but the "
                              f"dataset has {num_classes}")
    channels, size = input_shape[0], tuple(input_shape[1:])
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    xs, ys = [], []
    for c, sub in enumerate(meta["folders"]):
        for j in range(synset_size):
            path = os.path.join(folder, IMAGES, sub, f"{j:05d}.png")
            if not os.path.isfile(path):
                raise GenerationError(f"generated image {path} is missing; delete its cache entry to generate "
                                      f"the set again")
            xs.append((_decode(path, size, channels) - m) / s)
            ys.append(c)
    if not xs:
        return torch.empty((0, *input_shape)), torch.empty((0,), dtype=torch.int64)
    return torch.stack(xs), torch.as_tensor(np.asarray(ys, dtype=np.int64))


def with_generated(data: DatasetSplits, folder: str, synset_size: int, real: bool = True) -> DatasetSplits:
    """``data`` whose training split is the real one (``real``) plus ``synset_size`` generated
    images per class; validation and test stay the real ones."""
    if not isinstance(data.train_x, torch.Tensor):
        raise GenerationError(f"synthetic.synset_size: dataset {data.name!r} is read lazily (larger than "
                              f"memory_limit_gb); generated images join in-memory training sets only")
    x, y = load_generated(folder, synset_size, data.input_shape, data.mean, data.std, data.num_classes)
    x, y = x.to(data.train_x.device), y.to(data.train_y.device)
    train_x = torch.cat([data.train_x, x]) if real else x
    train_y = torch.cat([data.train_y, y]) if real else y
    return DatasetSplits(data.name, train_x, train_y, data.val_x, data.val_y, data.test_x, data.test_y,
                         data.num_classes, data.mean, data.std,
                         meta={**data.meta, "synset_size": synset_size, "real_train": real,
                               "real_train_size": len(data.train_y) if real else 0})


class SyntheticSet(StrictModel):
    """Which training set the student and the teacher train on: the real training split plus
    ``synset_size`` generated images per class (0: real only), or those alone (``real: false``)."""

    generation: GenerationRecipe | None = None
    synset_size: int = Field(0, ge=0, description="student: generated images per class added to the training set")
    real: bool = Field(True, description="student: keep the real training split (false: generated images only)")
    teacher_synset_size: int = Field(0, ge=0, description="teacher: generated images per class in its training set")
    teacher_real: bool = Field(True, description="teacher: keep the real training split")

    @model_validator(mode="after")
    def _sizes_fit(self):
        # Messages name the key relative to this model (the parser prefixes "synthetic.").
        for who, size, real in (("", self.synset_size, self.real),
                                ("teacher_", self.teacher_synset_size, self.teacher_real)):
            if not real and size == 0:
                raise ValueError(f"{who}real: false leaves no training images; set {who}synset_size > 0")
            if size and self.generation is None:
                raise ValueError(f"{who}synset_size: {size} generated images per class need a generation "
                                 f"recipe (synthetic.generation: the pipeline and prompts)")
            if self.generation is not None and size > self.generation.images_per_class:
                raise ValueError(f"{who}synset_size: {size} exceeds the images generated per class "
                                 f"(synthetic.generation.images_per_class = {self.generation.images_per_class})")
        return self

    def uses(self, teacher: bool) -> bool:
        return bool(self.teacher_synset_size if teacher else self.synset_size)

    def train_set(self, teacher: bool) -> dict[str, Any] | None:
        """The cache-key fields of a training set with generated images (None: the real split)."""
        size, real = (self.teacher_synset_size, self.teacher_real) if teacher else (self.synset_size, self.real)
        if not size:
            return None
        return {"generated": generation_recipe(self.generation), "synset_size": size, "real": real}
