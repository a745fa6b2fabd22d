"""The seed-experiment spaces: every full space parses with the authors' names and paths and
validates its trials (stand-in files where it reads an image folder), and every small variant runs
end to end here (slow)."""
import json
import os

import pytest

from orchestrator.space.spec import load_spec
from tests.conftest import REPO
from tests.seed_data import local_data_overrides

SPACES = os.path.join(REPO, "search_spaces")

# file: (expected trials, what of the authors' set-up the file must name)
FULL = {
    # The README table's cifar_v0 columns (1 and 3) and cifar_v1 columns (2 and 4).
    "superalignment_cifar100.yaml": (18, {"dataset": "cifar100", "data_root": "/cache/data/cifar",
                                          "pairs": {("resnet20", "resnet56"), ("shufflenetv1", "resnet32x4")},
                                          "losses": {"kd", "augconf", "adaptconf"}}),
    "superalignment_cifar100_v1.yaml": (18, {"dataset": "cifar100", "data_root": "/cache/data/cifar",
                                             "pairs": {("vgg8", "vgg13"), ("shufflenetv1", "resnet32x4")},
                                             "losses": {"kd", "augconf", "adaptconf"}}),
    "dapt_mit_indoor.yaml": (24, {"dataset": "imagefolder", "data_root": "/data/mit_indoor",
                                  "inits": {"fr", "lp", "ft"}, "losses": {"kd", "align_uniform", "crd", "srrl"}}),
    "weight_selection_vit_cifar100.yaml": (6, {"dataset": "imagefolder", "data_root": "/path/to/data/cifar100",
                                               "student": "vit_tiny",
                                               "source": "timm:vit_small_patch16_224.augreg_in21k"}),
    "weight_selection_convnext_cifar100.yaml": (6, {"dataset": "imagefolder", "data_root": "/path/to/data/cifar100",
                                                    "student": "convnext_femto", "source": "timm:convnext_tiny.fb_in22k"}),
    "weight_selection_vit_imagenet.yaml": (6, {"dataset": "imagefolder", "data_root": "/path/to/imagenet",
                                               "student": "vit_tiny",
                                               "source": "timm:vit_small_patch16_224.augreg_in21k"}),
    "weight_selection_convnext_imagenet.yaml": (6, {"dataset": "imagefolder", "data_root": "/path/to/imagenet",
                                                    "student": "convnext_femto", "source": "timm:convnext_tiny.fb_in22k"}),
    "dapt_synthetic_mit_indoor.yaml": (3, {"dataset": "imagefolder", "data_root": "/data/mit_indoor",
                                           "synset_sizes": [0, 80, 160], "classes": "mit_indoor"}),
    "dapt_synthetic_dtd.yaml": (3, {"dataset": "dtd", "data_root": "/data", "synset_sizes": [0, 40, 80],
                                    "classes": "dtd"}),
    "dapt_synthetic_caltech101.yaml": (3, {"dataset": "caltech101", "data_root": "/data", "synset_sizes": [0, 40, 80],
                                           "classes": "caltech101"}),
    "superalignment_imagenet_kd.yaml": (3, {"dataset": "imagefolder", "data_root": "/cache/data/imagenet"}),
    "superalignment_imagenet_transfer.yaml": (1, {"dataset": "imagefolder", "data_root": "/cache/data/imagenet"}),
    "superalignment_fewshot_miniimagenet.yaml": (6, {"dataset": "mini_imagenet", "data_root": "/cache/data/miniimagenet"}),
    # Issue 16: the noisy-label README table, one point per (dataset, noise) with its run script's T.
    "superalignment_noisy_cifar.yaml": (12, {"dataset": None, "data_root": "/cache/data/cifar",
                                             "noise": {("cifar10", "symmetric", 0.2, 20.0),
                                                       ("cifar10", "asymmetric", 0.4, 10.0),
                                                       ("cifar100", "symmetric", 0.2, 1.0),
                                                       ("cifar100", "asymmetric", 0.4, 10.0)}}),
}
SMALL = {"superalignment_digits.yaml": 3, "dapt_digits.yaml": 6, "weight_selection_digits.yaml": 2,
         "superalignment_fewshot_digits.yaml": 1, "superalignment_noisy_digits.yaml": 2,
         "dapt_synthetic_digits.yaml": 3}
# Shorter training for the end-to-end run where a variant's own length is for its accuracy, not for
# what the test checks (every trial finishes with metrics in range, the best config is the best
# trial): weight_selection_digits trains its students 100 epochs (its strong recipe needs them to
# beat chance) and its ViT-S-shaped teacher 10, several times the others' cost on 2 CPUs. At the
# other variants' length (6 epochs, a 3-epoch teacher) the test still runs the file's recipe end to
# end: the teacher prepared and cached, weight selection from it, the augmentation, both inits.
SHORTER = {"weight_selection_digits.yaml": ["--set", "params.epochs=6", "--set", "params.teacher.epochs=3"]}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_seed_space_parses_with_the_authors_setup(name, tmp_path):
    path = os.path.join(SPACES, name)
    trials, want = FULL[name]
    spec = load_spec(path, local_data_overrides(path, str(tmp_path)))
    assert spec.expected_trials() == trials
    with open(path) as f:
        params = __import__("yaml").safe_load(f)["params"]
    # None: the dataset is searched (each point names it)
    assert params.get("dataset") == want["dataset"] and params["dataset_kwargs"]["data_root"] == want["data_root"]
    assert spec.resources.gpus_per_worker == 0  # dry-runs anywhere; the header says how to ask for GPUs
    if "pairs" in want:
        points = spec.points_to_evaluate
        assert {(p["teacher.model"], p["student"]) for p in points} == want["pairs"]
        assert {p["loss"] for p in points} == want["losses"]
        assert len({(p["teacher.model"], p["student"], p["loss"]) for p in points}) == len(points) == spec.num_samples
    if "noise" in want:
        points = spec.points_to_evaluate
        assert {(p["dataset"], p["label_noise.kind"], p["label_noise.rate"], p["loss_params.temperature"])
                for p in points} == want["noise"]
        assert spec.params["teacher"]["model"] == "preact_resnet18" and spec.params["student"] == "preact_resnet34"
        assert spec.params["loss"] == "adaptconf" and spec.params["loss_params"]["rate"] == 0.25
    if "synset_sizes" in want:
        with open(path) as f:
            raw = __import__("yaml").safe_load(f)
        assert raw["search"]["synthetic.synset_size"] == {"grid": want["synset_sizes"]}
        generation = raw["params"]["synthetic"]["generation"]
        assert generation["classes"] == want["classes"] and generation["steps"] == 50
        assert raw["params"]["diffaugment"] == "S" and raw["params"]["teacher_mode"] == "online"
    if "inits" in want:
        assert {t["init"] for t in spec.domains["teacher"].args} == want["inits"]
        assert set(spec.domains["loss"].args) == want["losses"]
    if "source" in want:
        assert spec.params["student"] == want["student"] and spec.params["teacher"]["model"] == want["source"]
        assert spec.params["weight_selection"]["source"] == "teacher"
        assert set(spec.domains["student_init"].args) == {"weight_selection", "random"}


def test_every_full_seed_space_names_its_small_variant():
    for name in FULL:
        with open(os.path.join(SPACES, name)) as f:
            header = f.read().split("\nname:")[0]
        small = [s for s in SMALL if f"search_spaces/{s}" in header]
        assert small, f"{name} names no small variant in its header"


def test_relative_checkpoint_resolves_from_the_repository_root(tmp_path, monkeypatch):
    from trainables.distill.teacher import TeacherRecipe

    monkeypatch.chdir(tmp_path)  # a trial's own working directory
    recipe = TeacherRecipe(model="cnn", init="lp", checkpoint="search_spaces/assets/digits_cnn_backbone.pt")
    assert recipe.checkpoint == os.path.join(REPO, "search_spaces", "assets", "digits_cnn_backbone.pt")
    (tmp_path / "search_spaces" / "assets").mkdir(parents=True)
    local = tmp_path / "search_spaces" / "assets" / "digits_cnn_backbone.pt"
    local.write_bytes(b"x")
    # The working directory comes first.
    assert TeacherRecipe(model="cnn", init="lp", checkpoint="search_spaces/assets/digits_cnn_backbone.pt"
                         ).checkpoint == str(local)
    with pytest.raises(ValueError, match="does not exist"):
        TeacherRecipe(model="cnn", init="lp", checkpoint="nowhere/w.pt")


def test_a_point_setting_a_mapping_is_refused_before_ray():
    from orchestrator.errors import SpecError
    from orchestrator.space.spec import parse_spec

    text = """
name: t
trainable: distill
params: {dataset: digits, student: mlp_tiny, loss_params: {}}
search:
  teacher: {choice: [{model: cnn, epochs: 2}, {model: cnn_small, epochs: 2}]}
  loss: {choice: [kd, crd]}
points_to_evaluate:
  - {teacher: {model: cnn, epochs: 2}, loss: kd}
  - {loss: crd, loss_params: {nce_k: 16}}
num_samples: 2
"""
    with pytest.raises(SpecError) as info:
        parse_spec(text, "space.yaml")
    message = str(info.value)
    assert "points_to_evaluate[0].teacher: a point cannot set a mapping" in message
    assert "points_to_evaluate[1].loss_params: a point cannot set a mapping" in message
    assert "dotted keys (teacher.model: ...)" in message and "dotted keys (loss_params.nce_k: ...)" in message


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_seed_variant_runs(name, tmp_path, space_sweep):
    import mlflow

    extra = list(SHORTER.get(name, []))
    if name == "dapt_synthetic_digits.yaml":  # its tiny random diffusion pipeline, written here
        from tests.tiny_diffusion import build_tiny_pipeline

        extra += ["--set", f"params.synthetic.generation.pipeline={build_tiny_pipeline(str(tmp_path / 'sd'))}"]
    # the sweep's own working directory (test_fewshot.py checks the same few-shot sweep: one run serves both)
    tmp_path, proc, elapsed = space_sweep(os.path.join(SPACES, name), *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spec = load_spec(os.path.join(SPACES, name))
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`w2s.sweep` = 's'")
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(trials) == SMALL[name] == spec.expected_trials()
    for run in trials:
        assert run.info.status == "FINISHED"
        for key in ("val_acc", "test_acc"):
            assert 0.0 <= run.data.metrics[key] <= 1.0
        assert 0.0 <= float(run.data.params["static.teacher_test_acc"]) <= 1.0  # a constant: logged once
        if "label_noise" in spec.params:  # the realised rate, near the asked one (within 1 % of the labels)
            asked = float(run.data.params["label_noise.rate"])
            assert abs(float(run.data.params["static.label_noise_rate"]) - asked) <= 0.01
    if name == "dapt_synthetic_digits.yaml":
        # Each trial records its synset_size; the parent run the generated set's recipe hash, generated
        # once in the driver's preparation and read from the cache by every trial.
        assert sorted(int(r.data.params["synthetic.synset_size"]) for r in trials) == [0, 5, 10]
        parent = next(r for r in runs if r.data.tags["w2s.role"] != "trial")
        key = parent.data.params["prepared.generated_images_id"]
        assert parent.data.params["prepared.generated_images_hit"].lower() == "false"
        assert (tmp_path / "ray_results" / "cache" / "generated_images" / key / "generated.json").is_file()
        assert "generation: 100/100 images" in proc.stdout + proc.stderr
    best = json.loads((tmp_path / "ray_results" / "s" / "best_config.json").read_text())
    metric = spec.metric  # val_acc, or a few-shot accuracy
    assert best["metric"] == metric and 0.0 <= best["metrics"][metric] <= 1.0
    assert best["metrics"][metric] == max(r.data.metrics[metric] for r in trials)
    print(f"\n{name}: {elapsed:.0f}s; best {metric} {best['metrics'][metric]:.4f} "
          f"test_acc {best['metrics'].get('test_acc', float('nan')):.4f}")
    for run in trials:
        searched = {p: v for p, v in sorted(run.data.params.items())  # a searched recipe shows as its init
                    if any(p in (k, f"{k}.init") for k in spec.domains)}
        print(f"  {searched} val_acc {run.data.metrics['val_acc']:.4f} test_acc {run.data.metrics['test_acc']:.4f} "
              f"teacher_test_acc {float(run.data.params['static.teacher_test_acc']):.4f}")
