"""A cached stage in training: the teacher a sweep shares, a Sel-CL stage. One can run for hours
before any trial starts, so it says how far it is, and when it is interrupted (Ctrl-C, a crash, a
lost node) the next run of the sweep resumes it from its last checkpoint instead of from epoch 0.

The artifact cache (``orchestrator/store/cache.py``) builds an entry in a scratch folder that it
discards on failure. Around the build it also opens the entry's *work folder* (``.work-<key>``
beside the entries, on the building machine), which it keeps until the entry is published. A
stage finds it with :func:`trainables.core.stage_work.stage_dir` and keeps its checkpoint there;
outside a cache build (a test, a direct call) there is none, and the stage runs without one.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from trainables.core.durations import STAGE_PREFIX, format_duration, progress_interval_s
from trainables.runtime.session import LocalSession, current_trial_id

# A stage checkpoints at most this often (and after its last epoch): a checkpoint of a large
# model every epoch would cost more than the epochs it saves.
CHECKPOINT_INTERVAL_S = 60.0
HISTORY_KEY = "stage_history"  # the reported metrics so far, kept in the checkpoint


class StageSession(LocalSession):
    """A :class:`LocalSession` for a stage of ``epochs`` epochs called ``label``. It resumes from
    ``checkpoint_dir`` and checkpoints there, at most every ``checkpoint_interval_s`` and after
    the last epoch, together with the metrics reported so far (``history`` is whole after a resume).
    It prints a progress line after the first epoch, then every ``interval_s`` seconds
    (``W2S_PROGRESS_INTERVAL_S``), and after the last: the epoch, the ``keys`` it reported, the
    time per epoch and an estimate of the time left."""

    def __init__(self, label: str, epochs: int, device: torch.device | None = None,
                 checkpoint_dir: str | None = None, keys: tuple[str, ...] = ("train_loss", "val_acc"),
                 interval_s: float | None = None, checkpoint_interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, say: Callable[[str], None] | None = None):
        super().__init__(device, checkpoint_dir)
        # In a trial, its id first, as the driver's lines name trials: two trials' stages (one per
        # searched noise rate, say) run side by side and print the same label.
        trial = current_trial_id()
        self.label = f"{trial} {label}" if trial else label
        self.epochs, self.keys = epochs, keys
        self.interval_s = progress_interval_s() if interval_s is None else interval_s
        self.checkpoint_interval_s = CHECKPOINT_INTERVAL_S if checkpoint_interval_s is None else checkpoint_interval_s
        self.clock = clock
        self.say = say or (lambda line: print(f"{STAGE_PREFIX}{line}", flush=True))
        self.resumed_at = 0
        self._started = self._last_save = clock()
        self._last_line = -math.inf

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def restore(self) -> dict[str, Any] | None:
        try:
            state = super().restore()
        except RuntimeError as exc:  # unreadable (bit rot): the stage starts over rather than failing every build
            self.say(f"{self.label}: {exc}; starting the stage over")
            return None
        if state is None:
            return None
        self.history = list(state.pop(HISTORY_KEY, []))
        self.resumed_at = state["progress"]["epoch"]
        self.say(f"{self.label}: resuming after epoch {self.resumed_at}/{self.epochs} from its checkpoint in "
                 f"{self.checkpoint_dir}")
        return state

    def report(self, metrics: dict[str, Any], checkpoint: dict[str, Any] | None = None) -> None:
        now = self.clock()
        last = self.epochs_done + 1 >= self.epochs
        save = checkpoint is not None and (last or now - self._last_save >= self.checkpoint_interval_s)
        if save:
            checkpoint = {**checkpoint, HISTORY_KEY: [*self.history, metrics]}
        super().report(metrics, checkpoint if save else None)
        if save:
            self._last_save = now
        if self.epochs_done == self.resumed_at + 1 or last or now - self._last_line >= self.interval_s:
            self._last_line = now
            self.say(self.progress_line(now))

    def progress_line(self, now: float) -> str:
        done, metrics = self.epochs_done, self.last
        shown = [f"{k} {metrics[k]:.4g}" for k in self.keys if isinstance(metrics.get(k), (int, float))]
        per_epoch = (now - self._started) / max(done - self.resumed_at, 1)
        timing = f"{per_epoch:.2g}s/epoch" if per_epoch < 10 else f"{format_duration(per_epoch)}/epoch"
        if done < self.epochs:
            timing += f", about {format_duration(per_epoch * (self.epochs - done))} left"
        return " | ".join([f"{self.label}: epoch {done}/{self.epochs}", *shown, timing])
