"""Fractional-GPU packing of small trials and the packing lines --dry-run prints, on fake clusters."""
import pytest

from orchestrator.errors import SpecError
from orchestrator.run.resources import ClusterResources, packing, plan_resources, trial_resources
from orchestrator.space.spec import parse_spec
from tests.test_spec import BASE

FAKE = ClusterResources(cpus=16, gpus=2, source="fake cluster")


def plan(resources: str, cluster=FAKE):
    return plan_resources(parse_spec(BASE + f"resources: {resources}\n"), cluster)


def test_quarter_gpu_trials_pack_four_to_a_device():
    p = plan("{gpus_per_worker: 0.25, cpus_per_worker: 1}")
    spec = parse_spec(BASE + "resources: {gpus_per_worker: 0.25}\n")
    assert trial_resources(spec, 1) == {"CPU": 1.0, "GPU": 0.25}
    pk = packing(p.shapes[0], FAKE)
    assert (pk.per_gpu, pk.concurrent, pk.limited_by) == (4, 8, "GPUs")
    line = [ln for ln in p.lines() if ln.startswith("packing")][0]
    assert "4 trials share each GPU" in line and "8 at once" in line and "GPU 0: 4, GPU 1: 4" in line


def test_cpus_can_limit_packing_before_gpus_do():
    p = plan("{gpus_per_worker: 0.1, cpus_per_worker: 4}")
    pk = packing(p.shapes[0], FAKE)
    assert (pk.per_gpu, pk.concurrent, pk.limited_by) == (10, 4, "CPUs")
    assert "GPU 0: 4" in [ln for ln in p.lines() if ln.startswith("packing")][0]


def test_ddp_trials_hold_whole_gpus():
    cluster = ClusterResources(cpus=64, gpus=8, source="fake cluster")
    p = plan("{workers: 2, gpus_per_worker: 1}", cluster)
    line = [ln for ln in p.lines() if ln.startswith("packing")][0]
    assert "each trial holds 2 GPUs" in line and "4 at once" in line
    assert "GPU 7: 1" in line


def test_ddp_workers_cannot_share_a_gpu():
    with pytest.raises(SpecError, match="cannot share a GPU"):
        plan("{workers: 2, gpus_per_worker: 0.5}")


def test_cpu_trials_say_they_run_on_cpu():
    p = plan("{cpus_per_worker: 2}", ClusterResources(cpus=8, gpus=0, source="x"))
    assert "on CPU; 4 at once (limited by CPUs)" in "\n".join(p.lines())


def test_a_packed_plan_says_packing_measured_slower_and_a_whole_gpu_plan_does_not():
    packed = plan("{gpus_per_worker: 0.25, cpus_per_worker: 1}")
    [note] = [n for n in packed.notes if n.startswith("resources.gpus_per_worker 0.25")]
    assert "0.37-0.39x" in note and "params.vectorize" in note
    whole = plan("{gpus_per_worker: 1, cpus_per_worker: 1}")
    assert not [n for n in whole.notes if "trials share a GPU" in n]
