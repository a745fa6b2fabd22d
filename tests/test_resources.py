import pytest

from orchestrator.errors import SpecError
from orchestrator.run.resources import DRIVER_RESOURCE, ClusterResources, plan_resources, trial_resources
from orchestrator.space.spec import parse_spec
from tests.test_spec import BASE


def test_single_worker_trials_use_tunes_accounting():
    plan = plan_resources(parse_spec(BASE), ClusterResources(cpus=8, gpus=0, source="x"))
    assert plan.max_concurrent_trials is None


def test_ddp_trials_cap_concurrency_by_worker_groups():
    spec = parse_spec(BASE + "resources: {workers: 2, cpus_per_worker: 2}\n")
    plan = plan_resources(spec, ClusterResources(cpus=9, gpus=0, source="x"))
    assert plan.max_concurrent_trials == 2  # floor(9 / (2 x 2))
    assert trial_resources(spec, 2) == {"CPU": 0.0, DRIVER_RESOURCE: 1}


def test_gpu_trials_cap_by_gpus():
    spec = parse_spec(BASE + "resources: {workers: 4, gpus_per_worker: 1}\n")
    plan = plan_resources(spec, ClusterResources(cpus=64, gpus=8, source="x"))
    assert plan.max_concurrent_trials == 2


def test_cluster_without_driver_resource_falls_back_to_a_cpu_sliver():
    spec = parse_spec(BASE + "resources: {workers: 2}\n")
    assert trial_resources(spec, 2, driver_slots=0) == {"CPU": 0.01}


# --- resources: auto (issue 19) ----------------------------------------------------------------

AUTO = """
name: t
trainable: distill
params: {dataset: digits, student: mlp_tiny, epochs: 2}
resources: auto
control: {enabled: false}
"""


@pytest.mark.parametrize("gpus, cpus, workers, want_gpus, want_cpus", [
    (0, 2, 1, 0.0, 1.0),      # no GPU: one CPU per worker
    (1, 16, 1, 1.0, 8.0),     # one GPU: it, and 15 of 16 CPUs capped at 8
    (4, 16, 2, 1.0, 3.0),     # 4 GPUs: a GPU and (16 / 4 - 1) CPUs per worker
    (1, 16, 2, 0.0, 1.0),     # a 2-worker trial on 1 GPU: DDP ranks cannot share it, so CPU
])
def test_resources_auto_picks_the_device_from_the_cluster(gpus, cpus, workers, want_gpus, want_cpus):
    from orchestrator.run.resources import ClusterResources, plan_resources

    spec = parse_spec(AUTO.replace("resources: auto", f"resources: {{auto: true, workers: {workers}}}"), "s.yaml")
    assert spec.resources.auto and spec.resources.gpus_per_worker == 0
    plan = plan_resources(spec, ClusterResources(cpus=cpus, gpus=gpus, source="local machine"))
    assert (spec.resources.gpus_per_worker, spec.resources.cpus_per_worker) == (want_gpus, want_cpus)
    note = [line for line in plan.lines() if line.startswith("resources: auto -> ")]
    assert len(note) == 1 and f"gpus_per_worker {want_gpus:g}, cpus_per_worker {want_cpus:g}" in note[0]
    # a second plan (the reference runs) keeps the first choice
    plan_resources(spec, ClusterResources(cpus=64, gpus=8, source="cluster"), strict=False)
    assert spec.resources.gpus_per_worker == want_gpus


def test_resources_auto_with_explicit_devices_is_refused():
    with pytest.raises(SpecError, match="resources: auto picks gpus_per_worker and cpus_per_worker itself"):
        parse_spec(AUTO.replace("resources: auto", "resources: {auto: true, gpus_per_worker: 1}"), "s.yaml")
    with pytest.raises(SpecError, match="resources: must be a mapping .* or 'auto'"):
        parse_spec(AUTO.replace("resources: auto", "resources: gpu"), "s.yaml")
