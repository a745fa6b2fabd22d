"""The generation stage (DAPT's synthetic-data distillation) on a tiny, randomly initialised
Stable Diffusion pipeline built here (tests/tiny_diffusion.py): nothing is downloaded."""
from __future__ import annotations

import os

import pytest
import torch
from pydantic import ValidationError

from orchestrator.store.cache import ArtifactCache
from tests.tiny_diffusion import build_tiny_pipeline
from trainables.data.generated import GenerationError, GenerationRecipe, SyntheticSet, load_generated
from trainables.distill.loop import load_data, teacher_recipe
from trainables.distill.trainable import run_distill
from trainables.distill.params import DistillParams
from trainables.distill.synthetic import generated_set
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return build_tiny_pipeline(str(tmp_path_factory.mktemp("pipe") / "tiny-sd"), image_size=16)


def recipe(pipeline, **kw):
    return {"pipeline": pipeline, "classes": "digits", "images_per_class": 3, "steps": 2, "image_size": 16,
            "batch_size": 2, **kw}


def count_calls(monkeypatch):
    """Counts pipeline calls (every batch of images is one)."""
    from diffusers import StableDiffusionPipeline

    calls = []
    original = StableDiffusionPipeline.__call__

    def counted(self, *a, **kw):
        calls.append(len(kw.get("generator") or []))
        return original(self, *a, **kw)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counted)
    return calls


def test_generation_writes_class_folders_once_and_the_cache_serves_it_again(pipeline, tmp_path, monkeypatch, capsys):
    calls = count_calls(monkeypatch)
    g = GenerationRecipe.model_validate(recipe(pipeline))
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    entry = generated_set(g, ctx)
    root = os.path.dirname(entry.file("generated.json"))
    folders = sorted(os.listdir(os.path.join(root, "images")))
    assert folders == [f"{i:04d}_{n}" for i, n in enumerate(g.names)]
    from PIL import Image
    for f in folders:
        files = sorted(os.listdir(os.path.join(root, "images", f)))
        assert files == ["00000.png", "00001.png", "00002.png"]
        assert Image.open(os.path.join(root, "images", f, files[0])).size == (16, 16)
    assert calls == [2, 1] * 10  # batches of 2 then the remainder, per class
    assert entry.meta["prompts"][3] == "a picture of a three"
    assert "generation: 30/30 images" in capsys.readouterr().err
    # A second sweep (a new cache object on the same root) generates nothing.
    again = generated_set(GenerationRecipe.model_validate(recipe(pipeline, batch_size=3)),
                          TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache"))))
    assert again.hit and again.key == entry.key and len(calls) == 20
    # Another seed is another set.
    other = generated_set(GenerationRecipe.model_validate(recipe(pipeline, seed=1, images_per_class=1)), ctx)
    assert other.key != entry.key and not other.hit


def test_images_do_not_depend_on_the_batch_they_were_made_in(pipeline, tmp_path):
    from trainables.data.generated import generate_images

    a, b = tmp_path / "a", tmp_path / "b"
    generate_images(GenerationRecipe.model_validate(recipe(pipeline, classes=["cat", "dog"], batch_size=1)), str(a))
    generate_images(GenerationRecipe.model_validate(recipe(pipeline, classes=["cat", "dog"], batch_size=3)), str(b))
    for sub in ("0000_cat", "0001_dog"):
        for f in ("00000.png", "00002.png"):
            assert (a / "images" / sub / f).read_bytes() == (b / "images" / sub / f).read_bytes()


def test_real_plus_synthetic_training_sets_and_untouched_eval_splits(pipeline, tmp_path):
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    base = {"dataset": "digits", "synthetic": {"generation": recipe(pipeline)}}
    real = load_data(DistillParams.model_validate(base), ctx)
    mixed = load_data(DistillParams.model_validate({**base, "synthetic": {**base["synthetic"], "synset_size": 2}}), ctx)
    only = load_data(DistillParams.model_validate(
        {**base, "synthetic": {**base["synthetic"], "synset_size": 3, "real": False}}), ctx)
    n = len(real.train_y)
    assert len(mixed.train_y) == n + 20 and len(only.train_y) == 30
    assert torch.equal(mixed.train_x[:n], real.train_x) and torch.equal(mixed.val_x, real.val_x)
    assert torch.equal(only.test_y, real.test_y)
    assert mixed.train_x.shape[1:] == real.train_x.shape[1:] == (1, 8, 8)
    assert torch.equal(mixed.train_y[n:], torch.arange(10).repeat_interleave(2))
    assert torch.isfinite(only.train_x).all()


def test_distill_with_generated_images_for_student_and_teacher(pipeline, tmp_path):
    ctx = TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache")))
    common = {"dataset": "digits", "student": "mlp", "epochs": 1, "teacher": {"model": "mlp", "epochs": 1},
              "batch_size": 128}
    student_only = DistillParams.model_validate({**common, "synthetic": {"generation": recipe(pipeline),
                                                                         "synset_size": 2}})
    both = DistillParams.model_validate({**common, "synthetic": {"generation": recipe(pipeline), "synset_size": 2,
                                                                 "teacher_synset_size": 3}})
    # The teacher of the student-only run is the plain one: same key as without generated images.
    assert teacher_recipe(student_only) == teacher_recipe(DistillParams.model_validate(common))
    assert teacher_recipe(both)["synthetic"]["synset_size"] == 3
    logits_dir = tmp_path / "cache" / "teacher_set_logits"
    for i, p in enumerate((student_only, both), start=1):
        result = run_distill(p, LocalSession(CPU), ctx)
        assert 0.0 <= result["test_acc"] <= 1.0
        # The student's set differs from its teacher's in both: the teacher's logits on it are cached,
        # one row per training image of the student (real split + 2 generated per class).
        entries = sorted(d for d in logits_dir.iterdir() if not d.name.startswith("."))
        assert len(entries) == i
        logits = max((torch.load(e / "train_logits.pt") for e in entries), key=len)
        assert logits.shape == (len(load_data(p, ctx).train_y), 10)


def test_bad_generation_inputs_are_named(pipeline, tmp_path, monkeypatch):
    not_a_pipeline = tmp_path / "not_a_pipeline"
    not_a_pipeline.mkdir()
    with pytest.raises(ValidationError, match="not a diffusers pipeline .no model_index.json"):
        GenerationRecipe.model_validate(recipe(str(not_a_pipeline)))
    # Weights not on this machine parse (a dry run lists them) and are named before any trial
    from trainables.distill.prepare import check_distill_inputs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for where, problem in ((str(tmp_path / "missing"), "does not exist; put the diffusers pipeline folder there"),
                           ("CompVis/not-cached-here", "neither a folder nor in the Hugging Face hub cache")):
        p = DistillParams.model_validate({"dataset": "digits", "student": "mlp_tiny", "teacher_mode": "online",
                                          "synthetic": {"generation": recipe(where), "synset_size": 2}})
        (key, message), = check_distill_inputs(p)
        assert key == "synthetic.generation.pipeline" and problem in message, message
    with pytest.raises(ValidationError, match="class 1 has an empty name"):
        GenerationRecipe.model_validate(recipe(pipeline, classes=["cat", " "]))
    with pytest.raises(ValidationError, match="the list is empty"):
        GenerationRecipe.model_validate(recipe(pipeline, classes=[]))
    with pytest.raises(ValidationError, match=r"synset_size: 4 exceeds the images generated per class"):
        SyntheticSet.model_validate({"generation": recipe(pipeline), "synset_size": 4})
    with pytest.raises(ValidationError, match="real: false leaves no training images"):
        SyntheticSet.model_validate({"generation": recipe(pipeline), "real": False})


def test_a_corrupt_or_missing_generated_image_is_named(pipeline, tmp_path):
    from trainables.data.generated import generate_images

    g = GenerationRecipe.model_validate(recipe(pipeline, classes=["cat", "dog"], images_per_class=2))
    generate_images(g, str(tmp_path))
    bad = tmp_path / "images" / "0001_dog" / "00001.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(GenerationError, match=f"generated image {bad} cannot be decoded"):
        load_generated(str(tmp_path), 2, (3, 8, 8), (0.5,) * 3, (0.5,) * 3, 2)
    bad.unlink()
    with pytest.raises(GenerationError, match=f"generated image {bad} is missing"):
        load_generated(str(tmp_path), 2, (3, 8, 8), (0.5,) * 3, (0.5,) * 3, 2)
    with pytest.raises(GenerationError, match="synthetic.synset_size: 3 images per class asked, but the generated "
                                              "set holds 2"):
        load_generated(str(tmp_path), 3, (3, 8, 8), (0.5,) * 3, (0.5,) * 3, 2)
    # A folder without the manifest (an interrupted generation) is never taken as a set.
    os.remove(tmp_path / "generated.json")
    with pytest.raises(GenerationError, match="holds no finished generated set"):
        load_generated(str(tmp_path), 1, (3, 8, 8), (0.5,) * 3, (0.5,) * 3, 2)


def test_the_preparation_step_generates_once_and_a_second_sweep_only_reads(pipeline, tmp_path, monkeypatch):
    from trainables.distill.prepare import prepare_distill

    calls = count_calls(monkeypatch)
    fixed = {"dataset": "digits", "teacher": {"model": "mlp", "epochs": 1},
             "synthetic": {"generation": recipe(pipeline, images_per_class=2)}}
    searched = {"synthetic.synset_size"}
    first = prepare_distill(fixed, searched, TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache"))))
    assert first["generated_images_hit"] is False and len(calls) == 10  # one batch of 2 per class
    second = prepare_distill(fixed, searched, TrialContext(artifacts=ArtifactCache(str(tmp_path / "cache"))))
    assert second["generated_images_hit"] is True and second["generated_images_id"] == first["generated_images_id"]
    assert len(calls) == 10
    # Nothing trains on the generated images: no generation pass at all.
    none = prepare_distill(fixed, set(), TrialContext(artifacts=ArtifactCache(str(tmp_path / "other"))))
    assert "generated_images_id" not in none and len(calls) == 10
