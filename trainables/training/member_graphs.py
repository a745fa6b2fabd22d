"""Fused trials on streams (``fused_forward: streams``): each member's whole training step
(forward, loss, backward, optimiser update) captured as a CUDA graph of its own, and the members'
graphs replayed side by side, each on a CUDA stream of its own.

Why a third way besides vmap and loop. At the authors' CIFAR batch (64) a resnet8x4 step is a
few hundred small kernels. Eager, launching them bounds the step: one trial trained 8.7k-12k
images/s on an H100 (bench/results/gpu_check.log). Replayed as a CUDA graph it trained 18k
(``compile: reduce-overhead``, same log), yet its kernels still ran one after another, each
filling a fraction of the GPU. The vmap forward runs the members as one grouped computation, but
its grouped convolutions were 2.5x slower per image than plain ones (37k against 94k member
images/s at batch 512, K = 16), which caps it (2.36x sequential trials at batch 64). Here every
member runs the plain kernels of its own trial, with one graph launch per member and step, and
the members' kernels are in flight at once. On an H200 (K = 16, bench/results/sweep_gpu.jsonl) it
ran 10.2x sequential trials at batch 64 (vmap 3.24x) and 1.87x at 512, so ``auto`` picks it on
CUDA wherever it can run (trainables/training/fused.py::forward_mode).

What a capture needs, and where it is handled:

* **Static inputs.** The batch, its targets, the teacher's outputs and the sample indices are
  copied into tensors at fixed addresses before each replay (:class:`StaticBatch`). An epoch's last
  partial batch (another shape) runs eagerly.
* **Static outputs.** A replay overwrites the statistics the previous one returned; the fused
  epoch stacks them right after each step, before the next replay is queued.
* **The lr.** Each optimiser group's lr becomes a 0-d device tensor that the schedule fills in
  place (torch's fused SGD and Adam read it on the device); Adam's groups become ``capturable``.
  Each member steps its own groups (:func:`member_optimizers`: views of the trial's one optimiser,
  sharing its state, so checkpoints and the schedule are the fused trial's as before).
* **Warm-up.** The first :data:`WARMUP` full steps run eagerly on the members' streams (optimiser
  state allocated, cuDNN and cuBLAS initialised on those streams) before anything is captured.
* **Python values a loss reads** (``epoch``, ``progress``) are baked into a graph, so each member's
  graph is captured again on the first full step of every epoch.
* **Autocast runs without its weight cache** (a cast cached during the capture would not be
  redone in a replay after the weights changed); the eager steps run the same way, so a member's
  eager and replayed steps compute alike.
* **Private memory pools**: graphs replayed at once must not share their intermediate buffers.
* **Random draws** inside a step (CRD's negatives, dropout) come from a random state of the
  member's own (:func:`member_rng`), which the CUDA generator points at while that member's graph
  is captured (``graphsafe_set_state``), so the graph registers it. A replay first writes its
  state's seed and offset to the device, on its own stream, then advances that offset. Graphs that
  shared the generator's one state would share those two device numbers too: members replayed at
  once could read the same offset and draw alike. A member's state is new each epoch, seeded from
  the trial's seed, the member's index and the epoch, and its eager steps (warm-up, the last
  partial batch) draw from it too, advancing it as a replay would. So the members' draws are
  independent of each other, as under vmap and loop, and a member's i-th step of an epoch draws
  the same numbers whether it ran eagerly or replayed, in every run of the trial, resumed or not.

On a CPU there is nothing to capture: each member's step runs eagerly in turn (the function the
graphs capture), and a member equals its unfused trial (tests/test_fused.py). Members that leave
(ASHA, divergence) are no longer replayed and their graphs are freed. DDP workers are refused at
parse time: the gradient average would have to run inside every member's graph.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import torch
from torch import nn

from trainables.losses import DistillLoss, LossInputs
from trainables.runtime.engine import autocast

# Full steps run eagerly on the members' streams before the first capture (PyTorch's CUDA-graph
# notes ask for a few; what matters is that optimiser state exists and the libraries initialised).
WARMUP = 3


def member_optimizers(optimizer: torch.optim.Optimizer, members: int) -> list[torch.optim.Optimizer]:
    """One optimiser per member that steps only that member's parameter groups (those tagged
    ``member``) and shares ``optimizer``'s state and group dicts: an update through a view is the
    update the whole optimiser makes for that member. A shallow copy goes through
    ``__getstate__``, so it drops the instance ``step`` that an lr scheduler wraps around the
    original (which would step every group)."""
    views = []
    for k in range(members):
        view = copy.copy(optimizer)
        # (a single trial's groups restored from a checkpoint written eagerly carry no tag: its one member's)
        view.param_groups = [g for g in optimizer.param_groups if g.get("member", 0) == k]
        views.append(view)
    return views


def lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's lr as a 0-d float32 tensor on ``device``: a captured step reads it there, and
    the lr schedule fills it in place (torch's schedulers ``fill_`` a tensor lr). Adam's groups are
    made ``capturable`` (its step count then stays on the device too)."""
    for g in optimizer.param_groups:
        lr = g["lr"]
        if not isinstance(lr, torch.Tensor) or lr.device != device:
            g["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        if "capturable" in g:
            g["capturable"] = True


def member_rng(device: torch.device, member: int, epoch: int) -> torch.Generator:
    """Member ``member``'s own CUDA random state for ``epoch``: a copy of ``device``'s default
    generator state, seeded from that generator's seed (the trial's), the member's index and the
    epoch (no two (member, epoch) pairs of a trial share a seed)."""
    default = default_cuda_generator(device)
    seed = default.initial_seed() * 1_000_003 + 7_919 * (member + 1) + 104_729 * epoch
    return default.clone_state().manual_seed(seed % 2**63)


def default_cuda_generator(device: torch.device) -> torch.Generator:
    return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]


@contextmanager
def drawing_from(rng: torch.Generator | None):
    """Inside the block the default CUDA generator of ``rng``'s device draws from ``rng``'s state
    (torch's graph-safe swap, which a capture registers); outside it, from its own again. Nothing
    changes for ``None``."""
    if rng is None:
        yield
        return
    default = default_cuda_generator(rng.device)
    outer = default.graphsafe_get_state()
    default.graphsafe_set_state(rng)
    try:
        yield
    finally:
        default.graphsafe_set_state(outer)


def member_step(model: nn.Module, loss_fn: DistillLoss, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                shared: LossInputs, device: torch.device) -> dict[str, torch.Tensor]:
    """One member's whole training step, as its own trial takes it: forward, loss, backward and
    the update of its parameters. What a graph captures, and what runs eagerly otherwise."""
    optimizer.zero_grad(set_to_none=True)  # a captured backward then writes the gradients, not adds
    with autocast(device, cache=False):
        z, f = model(x, return_features=True) if loss_fn.needs_features else (model(x), None)
        out = loss_fn(replace(shared, student_logits=z.float(), student_features=f))
    out["loss"].backward()
    optimizer.step()
    return out


class CaptureError(RuntimeError):
    """A step could not be captured as a CUDA graph (it synchronises with the host, or runs an
    operation a capture does not take); the message says which key turns the capture off."""


class StaticBatch:
    """The tensors a captured step reads, at fixed addresses: each step's values are copied in.
    ``version`` changes when one is reallocated (a new shape), which makes the captures stale."""

    FIELDS = ("targets", "teacher_logits", "teacher_features", "indices")

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.version = 0

    def _static(self, name: str, value: torch.Tensor) -> torch.Tensor:
        t = self.tensors.get(name)
        if t is None or t.shape != value.shape or t.dtype != value.dtype or t.stride() != value.stride():
            t = self.tensors[name] = torch.empty_like(value)  # keeps the layout (channels_last)
            self.version += 1
        return t.copy_(value)

    def load(self, x: torch.Tensor, shared: LossInputs) -> tuple[torch.Tensor, LossInputs]:
        values = {name: getattr(shared, name) for name in self.FIELDS}
        statics = {name: None if v is None else self._static(name, v) for name, v in values.items()}
        return self._static("x", x), replace(shared, member_columns=None, **statics)


class MemberGraph:
    """One member's step as a CUDA graph: captured by :meth:`replay` when it holds none or was
    made :meth:`stale` (on the current stream, in the member's own memory pool), then replayed;
    each replay returns the same output tensors, holding that step's values. A stale graph's
    successor is captured into the same pool while the old graph still holds it, then the old one
    is freed: one pool per member for the whole trial, not one per epoch."""

    def __init__(self, advice: str = "set fused_forward: vmap or loop"):
        self.advice = advice  # what the error of a failed capture tells the user to set
        self.graph: torch.cuda.CUDAGraph | None = None
        self.is_stale = False
        self.out: dict[str, torch.Tensor] = {}
        self.captures = 0

    def replay(self, fn: Callable[[], dict[str, torch.Tensor]],
               rng: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``rng``: the random state a capture registers and draws from (the generator's own if none)."""
        if self.graph is None or self.is_stale:
            self._capture(fn, rng)
        self.graph.replay()
        return self.out

    def stale(self) -> None:
        self.is_stale = True

    def _capture(self, fn: Callable[[], dict[str, torch.Tensor]], rng: torch.Generator | None) -> None:
        # capture_begin / capture_end rather than torch.cuda.graph(), which also synchronises the
        # device and runs the garbage collector: K times an epoch here, while other members' graphs
        # replay. thread_local: the batch-prefetch thread may synchronise its own stream meanwhile.
        old = self.graph
        graph = torch.cuda.CUDAGraph()
        # capture_begin registers the state the default generator points at: the member's own.
        with drawing_from(rng):
            graph.capture_begin(pool=old.pool() if old is not None else None, capture_error_mode="thread_local")
            try:
                out = fn()
            except RuntimeError as exc:
                try:
                    graph.capture_end()
                except RuntimeError:
                    pass
                raise CaptureError(f"a training step cannot be captured as a CUDA graph ({str(exc).splitlines()[0]}); "
                                   f"{self.advice}") from exc
            graph.capture_end()
        self.graph, self.out, self.is_stale = graph, out, False
        if old is not None:
            old.reset()
        self.captures += 1

    def reset(self) -> None:
        if self.graph is not None:
            self.graph.reset()
        self.graph, self.out = None, {}


class MemberGraphs:
    """The steps of a fused trial's members with ``fused_forward: streams``, or of a single trial
    with ``cuda_graphs`` (one member: trainables/training/classifier_loop.py): eager in turn on a
    CPU, graphs replayed on streams on CUDA (the module docstring says how). ``graph`` makes a
    member's graph (:class:`MemberGraph` on CUDA; tests pass a stand-in to run the capture
    bookkeeping on a CPU); ``advice``: what a failed capture's error tells the user to set."""

    def __init__(self, models: list[nn.Module], losses: list[DistillLoss], optimizer: torch.optim.Optimizer,
                 device: torch.device, batch_size: int, warmup: int = WARMUP,
                 graph: Callable[[], MemberGraph] | None = None, advice: str = "set fused_forward: vmap or loop"):
        self.models, self.losses, self.optimizer = models, losses, optimizer
        self.device, self.batch_size, self.warmup = device, batch_size, warmup
        self.cuda = device.type == "cuda"
        self.make_graph = graph or ((lambda: MemberGraph(advice)) if self.cuda else None)
        self.streams = [torch.cuda.Stream(device) for _ in models] if self.cuda else []
        self.statics = StaticBatch()
        self.graphs: dict[int, MemberGraph] = {}
        self.rngs: dict[int, tuple[int, torch.Generator]] = {}  # member -> (epoch, its random state)
        self.warm = 0  # eager full steps taken so far
        self.captured_for: tuple[int, int] | None = None  # (epoch, statics version) of the graphs
        self._views: list[torch.optim.Optimizer] = []
        self._views_of: tuple | None = None

    def views(self) -> list[torch.optim.Optimizer]:
        """The members' optimiser views, rebuilt when the optimiser's groups or state were replaced
        (a restored checkpoint): the graphs captured over the old ones are dropped then too."""
        key = (id(self.optimizer.state), tuple(id(g) for g in self.optimizer.param_groups))
        if key != self._views_of:
            if self.cuda:
                lr_on_device(self.optimizer, self.device)
            self._views, self._views_of = member_optimizers(self.optimizer, len(self.models)), key
            self.release(list(self.graphs))
        return self._views

    def step(self, epoch: int, x: torch.Tensor, shared: LossInputs, active: list[int]) -> list[dict[str, torch.Tensor]]:
        """Every active member's step on batch ``x``; each one's loss statistics, in ``active`` order."""
        views = self.views()

        def eager(k: int, x: torch.Tensor, shared: LossInputs) -> dict[str, torch.Tensor]:
            with drawing_from(self.rng(k, epoch)):
                return member_step(self.models[k], self.losses[k], views[k], x, shared, self.device)

        if self.make_graph is None or x.shape[0] != self.batch_size:
            # The CPU, or the last partial batch of an epoch: eagerly, one member after another.
            return [eager(k, x, shared) for k in active]
        x, shared = self.statics.load(x, shared)
        if self.warm < self.warmup:
            self.warm += 1
            return self.on_streams(active, lambda k: eager(k, x, shared))
        if self.captured_for != (epoch, self.statics.version):
            for graph in self.graphs.values():  # captured again on this step, into the same pools
                graph.stale()
            self.captured_for = (epoch, self.statics.version)

        def replay(k: int) -> dict[str, torch.Tensor]:
            if k not in self.graphs:
                self.graphs[k] = self.make_graph()
            model, loss_fn, view, device = self.models[k], self.losses[k], views[k], self.device
            return self.graphs[k].replay(lambda: member_step(model, loss_fn, view, x, shared, device),
                                         rng=self.rng(k, epoch))

        return self.on_streams(active, replay)

    def rng(self, k: int, epoch: int) -> torch.Generator | None:
        """Member k's random state for ``epoch`` (:func:`member_rng`; none on a CPU), which all its
        steps of the epoch draw from, eager or replayed: an eager step advances it by what a replay
        of the same step does, so a member's i-th step of an epoch draws the same numbers either way."""
        if not self.cuda:
            return None
        held = self.rngs.get(k)
        if held is None or held[0] != epoch:
            held = self.rngs[k] = (epoch, member_rng(self.device, k, epoch))
        return held[1]

    def on_streams(self, active: list[int], fn: Callable[[int], dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        """``fn(k)`` for each active member, on CUDA issued on member k's stream after everything
        queued so far on the current stream (the static inputs' copies), which then waits for
        all of them."""
        if not self.cuda:
            return [fn(k) for k in active]
        main = torch.cuda.current_stream(self.device)
        outs = []
        for k in active:
            stream = self.streams[k]
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outs.append(fn(k))
        for k in active:
            main.wait_stream(self.streams[k])
        return outs

    def release(self, members: list[int]) -> None:
        """Free the graphs (and their memory pools) of ``members``."""
        for k in members:
            graph = self.graphs.pop(k, None)
            if graph is not None:
                graph.reset()
