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
