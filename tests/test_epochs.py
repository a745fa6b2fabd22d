"""The shared runtime pieces of every training loop: the checkpointed epoch loop (resume where the
checkpoint stopped, with the same state; checkpoint cadence; divergence) and the one predict."""
import pytest
import torch
from torch import nn

from trainables.models import create_model
from trainables.runtime.engine import predict
from trainables.runtime.epochs import Checkpointed, EpochMeans, run_epochs, wants_checkpoint
from trainables.runtime.session import LocalSession, TrialDiverged

CPU = torch.device("cpu")
X = torch.linspace(-1, 1, 32).reshape(16, 2)
Y = X @ torch.tensor([[2.0], [-1.0]]) + 0.5


class Toy:
    """A linear regression trained one full-batch step per epoch, with a schedule and a record."""

    def __init__(self, nan_at: int | None = None):
        torch.manual_seed(0)
        self.model = nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2, gamma=0.5)
        self.progress = {"epoch": 0, "steps": 0}
        self.latest = {"mse": float("nan")}
        self.nan_at = nan_at
        self.trained: list[int] = []

    def checkpointed(self) -> Checkpointed:
        return Checkpointed({"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler},
                            self.progress, records={"latest": self.latest})

    def train_epoch(self, epoch: int) -> dict[str, torch.Tensor]:
        self.trained.append(epoch)
        means = EpochMeans()
        for _ in range(2):
            loss = nn.functional.mse_loss(self.model(X), Y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.progress["steps"] += 1
            means.add({"loss": loss if epoch != self.nan_at else loss * float("nan")})
        self.scheduler.step()
        return means.means()

    def epoch_metrics(self, epoch: int, stats: dict[str, float]) -> dict[str, float]:
        self.latest["mse"] = stats["train_loss"]
        return {"epoch": epoch + 1, **stats, "lr": self.optimizer.param_groups[0]["lr"]}


class Crash(Exception):
    pass


class CrashAfter(LocalSession):
    def __init__(self, directory, reports):
        super().__init__(CPU, checkpoint_dir=directory)
        self.reports = reports
        self.checkpointed_at: list[int] = []

    def report(self, metrics, checkpoint=None):
        super().report(metrics, checkpoint)
        if checkpoint is not None:
            self.checkpointed_at.append(metrics["epoch"])
        if len(self.history) == self.reports:
            raise Crash


def train(toy: Toy, session, epochs=5, every=2):
    return run_epochs(session, toy.checkpointed(), epochs, toy.train_epoch, toy.epoch_metrics, every)


def test_checkpoints_every_n_epochs_and_at_the_end():
    assert [e for e in range(1, 8) if wants_checkpoint(e, 7, 3)] == [3, 6, 7]
    assert [e for e in range(1, 8) if wants_checkpoint(e, 7, 0)] == [7]
    session = CrashAfter(None, reports=0)
    final = train(Toy(), session)
    assert session.checkpointed_at == [2, 4, 5] and [h["epoch"] for h in session.history] == [1, 2, 3, 4, 5]
    assert final == session.history[-1]
    state = session.last_state
    assert list(state) == ["model", "optimizer", "scheduler", "progress", "latest"]
    assert state["progress"] == {"epoch": 5, "steps": 10} and state["latest"] == {"mse": final["train_loss"]}


def test_resume_continues_at_the_next_epoch_with_the_same_state(tmp_path):
    whole_toy, whole = Toy(), CrashAfter(None, reports=0)
    train(whole_toy, whole)
    with pytest.raises(Crash):
        train(Toy(), CrashAfter(str(tmp_path), reports=3))  # epoch 3 is lost: the checkpoint is epoch 2's
    resumed_toy, resumed = Toy(), CrashAfter(str(tmp_path), reports=0)
    train(resumed_toy, resumed)
    assert resumed_toy.trained == [2, 3, 4] and [h["epoch"] for h in resumed.history] == [3, 4, 5]
    assert resumed.history == whole.history[2:]
    for key, value in whole_toy.model.state_dict().items():
        assert torch.equal(resumed_toy.model.state_dict()[key], value)
    assert resumed_toy.progress == whole_toy.progress and resumed_toy.latest == whole_toy.latest
    assert resumed_toy.scheduler.state_dict() == whole_toy.scheduler.state_dict()


def test_a_finished_checkpoint_trains_nothing(tmp_path):
    train(Toy(), CrashAfter(str(tmp_path), reports=0))
    toy, again = Toy(), CrashAfter(str(tmp_path), reports=0)
    assert train(toy, again) == {} and toy.trained == [] and again.history == []


def test_only_the_main_rank_attaches_checkpoints():
    session = CrashAfter(None, reports=0)
    session.rank = 1
    train(Toy(), session)
    assert session.checkpointed_at == [] and len(session.history) == 5


def test_optional_state_is_skipped_when_the_checkpoint_lacks_it():
    toy = Toy()
    saved = toy.checkpointed().state()
    extra = nn.Linear(1, 1)
    before = {k: v.clone() for k, v in extra.state_dict().items()}
    state = Checkpointed({**toy.checkpointed().stateful, "loss_fn": extra}, toy.progress, optional=("loss_fn",))
    state.load({**saved, "loss_fn": {}})
    state.load(saved)
    assert all(torch.equal(extra.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(KeyError):
        Checkpointed({"loss_fn": extra}, toy.progress).load(saved)


def test_a_non_finite_loss_stops_the_trial_at_its_epoch():
    session = CrashAfter(None, reports=0)
    with pytest.raises(TrialDiverged) as exc:
        train(Toy(nan_at=2), session)
    assert exc.value.epoch == 3 and [h["epoch"] for h in session.history] == [1, 2]


@pytest.mark.parametrize("batch_size", [1024, 5])
def test_predict_gives_the_forward_pass_logits_and_features(batch_size):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(2, 4, 4))
    model.adapt_input((0.5, 0.1), (2.0, 3.0))  # no-op without input_norm; predict goes through forward
    model.train()
    x = torch.randn(12, 2, 4, 4)
    logits = predict(model, x, batch_size=batch_size)
    feats = predict(model, x, batch_size=batch_size, features=True)
    assert model.training  # the mode is put back
    model.eval()
    with torch.no_grad():
        want_logits, want_feats = model(x, return_features=True)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats, want_feats, rtol=1e-5, atol=1e-6)
    assert logits.dtype == feats.dtype == torch.float32 and not logits.requires_grad
    assert predict(model, x[:0]).numel() == 0
