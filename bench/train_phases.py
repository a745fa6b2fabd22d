"""A Ray Train callback that timestamps the Train controller's phases of a DDP trial (controller up,
worker group start, workers ready, training launched, shutdown) into the phase log of
:mod:`trainables.runtime.phases`. bench/overhead.py loads it into every Train run of its sweep with
``RAY_TRAIN_CALLBACKS=bench.train_phases.PhaseCallback`` (Ray Train V2 builds the callbacks that
variable names in the trial process and runs them in the controller actor), so the production
code path carries no benchmark hooks beyond the worker's and driver's own marks.
"""
from __future__ import annotations

from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

from trainables.runtime import phases


class PhaseCallback(WorkerGroupCallback, ControllerCallback):
    def __init__(self):
        self.run = "?"

    def after_controller_start(self, train_run_context):
        self.run = train_run_context.run_config.name
        phases.mark(self.run, "controller_process_created", t=phases.process_start_time())
        phases.mark(self.run, "controller_started")

    def before_worker_group_start(self, worker_group_context):
        phases.mark(self.run, "worker_group_start")

    # The env callbacks come first in Train's list: this runs once the placement group is ready and
    # the worker actors exist, before the backend (gloo process group) is set up
    def after_worker_group_start(self, worker_group):
        phases.mark(self.run, "worker_actors_ready")

    def after_worker_group_training_start(self, worker_group):
        phases.mark(self.run, "train_fn_launched")

    def before_worker_group_shutdown(self, worker_group):
        phases.mark(self.run, "shutdown_start")

    def after_worker_group_shutdown(self, worker_group_context):
        phases.mark(self.run, "shutdown_done")

    def after_controller_finish(self, result):
        phases.mark(self.run, "controller_finished")
