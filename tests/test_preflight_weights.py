"""The pre-flight lists pretrained weights and checkpoint files a sweep's models need and this
machine lacks, as it lists missing datasets: a dry run shows them (exit 0), a real run refuses to
start (exit 2, before Ray) rather than failing in its trials or its feature pass.

Offline is forced (``HF_HUB_OFFLINE``) and the torch hub cache is a fresh folder, so that what is
"missing" does not depend on this machine's network or caches."""
from __future__ import annotations

import os

import pytest

from orchestrator import cli
from tests.conftest import REPO

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("name,source", [
    ("alexnet", f"https://download.pytorch.org/models/{ALEXNET_FILE}"),  # a torchvision alias
    ("tv:resnet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth"),  # the tv: provider
    ("timm:vit_small_patch16_224.dino", "the Hugging Face Hub repo timm/vit_small_patch16_224.dino"),  # timm: provider
    ("dino_vitb8", "the Hugging Face Hub repo timm/vit_base_patch8_224.dino"),  # a timm alias
    ("dino_resnet50", "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"),
])
def test_missing_library_weights_are_named_with_their_source(offline, name, source):
    from trainables.models import weights_problem

    problem = weights_problem(name, {"pretrained": True})
    assert problem.startswith(f"model {name!r}: pretrained weights unavailable (offline mode is set")
    assert f"They come from {source} and were not found in " in problem and "checkpoint:" in problem
    # no weights asked for, or a model that has none: nothing to check
    assert weights_problem(name, {"pretrained": False}) is None and weights_problem(name, {}) is None
    assert weights_problem("resnet20", {"pretrained": True}) is None


def test_weights_in_the_local_cache_need_no_network(offline):
    from trainables.models import weights_problem

    offline.mkdir(parents=True)
    (offline / ALEXNET_FILE).write_bytes(b"")  # only its presence is checked: nothing is read or built
    assert weights_problem("alexnet", {"pretrained": True, "head": "pretrained"}) is None
    assert weights_problem("tv:alexnet", {"pretrained": True}) is None  # the provider's name, the same file
    assert "were not found" in weights_problem("tv:resnet18", {"pretrained": True})  # another model's file


def test_a_checkpoint_kwarg_naming_no_file_is_an_issue(tmp_path):
    from trainables.models import weights_issues

    path = tmp_path / "w.pt"
    issues = weights_issues([("student_kwargs", "resnet8", {"checkpoint": str(path)}),
                             ("teacher.pretrained", "cnn", {"pretrained": False})])
    assert issues == [("student_kwargs", f"checkpoint file {str(path)!r} does not exist")]
    path.write_bytes(b"")
    assert weights_issues([("student_kwargs", "resnet8", {"checkpoint": str(path)})]) == []


def dry_run(tmp_path, capsys, space, *sets):
    rc = cli.main([os.path.join(REPO, "search_spaces", space), "--dry-run", *sum((["--set", s] for s in sets), []),
                   "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    head = "# missing inputs ("
    return [line.strip() for line in out.split(head)[1].split("\n\n")[0].splitlines()[1:]] if head in out else []


def test_seed_000s_dry_run_lists_its_data_and_every_models_weights(offline, tmp_path, capsys):
    """w2s_imagenet_probe on a machine with neither ImageNet val nor the weights: each is listed
    under the key that sets it (the searched strong backbones under search.strong)."""
    listed = dry_run(tmp_path, capsys, "w2s_imagenet_probe.yaml", f"params.dataset_kwargs.data_root={tmp_path}/in1k")
    assert [line.split(": ", 1)[0] for line in listed] == [
        "params.dataset", "params.weak.model_kwargs", "search.strong", "search.strong"]
    assert f"no images under {tmp_path}/in1k/val/<class>/" in listed[0]
    assert "model 'alexnet': pretrained weights unavailable" in listed[1]
    assert "model 'dino_resnet50'" in listed[2] and "model 'dino_vitb8'" in listed[3]


def test_distill_lists_teacher_student_and_source_weights(offline, tmp_path, capsys):
    listed = dry_run(tmp_path, capsys, "superalignment_imagenet_transfer.yaml",
                     f"params.dataset_kwargs.data_root={tmp_path}/in1k")
    keys = [line.split(": ", 1)[0] for line in listed]
    assert keys == ["params.dataset", "params.teacher.pretrained", "params.student_init"]
    assert "model 'timm:resnet50.a1_in1k'" in listed[1] and "model 'timm:vit_base_patch16_224.mae'" in listed[2]
    # weight selection from a named source model (not the teacher): its weights are listed too
    listed = dry_run(tmp_path, capsys, "weight_selection_digits.yaml",
                     "params.weight_selection={source: 'timm:vit_small_patch16_224.dino', "
                     "source_kwargs: {pretrained: true}, method: uniform}", "params.student_init=weight_selection",
                     "search.student_init=null")
    assert [line.split(": ", 1)[0] for line in listed] == ["params.weight_selection.source_kwargs"]


def test_a_real_run_refuses_before_ray_starts(offline, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main([os.path.join(REPO, "search_spaces", "w2s_digits_probe.yaml"),
                   "--set", "params.weak={model: 'timm:resnet10t', model_kwargs: {pretrained: true, head: new}}",
                   "--set", "params.pretrain_split.weak=0",
                   "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/ml.db"])
    err = capsys.readouterr().err
    import ray

    assert rc == 2 and not ray.is_initialized() and "Traceback" not in err
    assert "params.weak.model_kwargs: model 'timm:resnet10t': pretrained weights unavailable" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
