"""docs/random_teachers.md maps every dinopl flag and ``--enc`` name to a ``dino`` search-space key
that exists, or says "not applicable: <reason>" or "missing". This parses its two tables and checks
the rows against dinopl's lists (copied below from safelix/dinopl at commit cd39e78) and every key
against the code: DinoParams / HeadConfig / CropConfig fields, the dino loss's params model, the
encoders' keyword arguments, the model registry, and the sweep file's own keys."""
from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from orchestrator.space.model import SweepSpec
from trainables.dino.params import DinoParams
from trainables.losses import loss_params_model
from trainables.models import check_model_kwargs, is_known_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "random_teachers.md"

# dinopl configuration.py: Configuration.parse_cmd's pre-parser (--from_json), then
# Configuration.parser's groups, in order (72 flags).
DINOPL_FLAGS = [
    "--from_json",
    "--n_workers", "--seed", "--log_every", "--ckpt_path", "--force_cpu", "--float64",
    "--dataset", "--n_classes", "--n_samples", "--bs_train", "--batchaccum", "--samples_per_epoch", "--bs_eval",
    "--label_noise_ratio", "--logit_noise_temp", "--resample_target_noise", "--inputs_as_logits", "--augs", "--mc",
    "--per_crop_augs",
    "--enc", "--enc_norm_layer", "--tiny_input", "--head_init_method", "--mlp_act", "--mlp_bn", "--hid_dims",
    "--l2bot_dim", "--l2bot_cfg", "--out_dim",
    "--t_init", "--t_init_seed", "--s_init", "--s_init_seed", "--s_init_alpha", "--s_init_eps",
    "--s_init_var_preserving", "--s_mode", "--t_mode", "--t_mom", "--t_update_every", "--t_bn_mode", "--t_eval",
    "--t_cmom", "--s_cmom", "--t_temp", "--s_temp", "--loss", "--loss_pairing",
    "--n_epochs", "--n_steps", "--stop_on_non_finite", "--opt", "--opt_lr", "--opt_wd", "--opt_mom", "--opt_beta1",
    "--opt_beta2", "--clip_grad", "--wn_freeze_epochs",
    "--validation_freq", "--probe_every", "--probing_epochs", "--probing_k", "--normalize_probe", "--prober_seed",
    "--track_feathist", "--track_gradvar", "--save_ckpt", "--save_features", "--save_paramstats",
]
# In the parser but not in the README's usage text (which lists the other 69).
NOT_IN_README = {"--inputs_as_logits", "--stop_on_non_finite", "--validation_freq"}

# dinopl models/__init__.py __all__: flatten, mlp, convnet, vgg, resnet, vit (38 names).
DINOPL_ENCODERS = (
    ["flatten"]
    + [f"mlp_{w}_{d}" for w in (512, 1024) for d in range(1, 6)]
    + [f"convnet_{w}_{d}" for w in (16, 32) for d in range(1, 6)]
    + [n for depth in (11, 13, 16, 19) for n in (f"vgg{depth}", f"vgg{depth}_bn")]
    + ["resnet18", "resnet34", "resnet50", "resnet20", "resnet56"]
    + ["vit_tiny", "vit_small", "vit_medium", "vit_base"]
)

# encoder_kwargs without an encoder in the same cell: accepted by one of the dinopl ports.
DINOPL_PORTS = ["resnet18_tiny", "vgg11_nobn", "convnet_16_1", "mlp_512_1", "vit_medium"]

NA = "not applicable: "
REF = re.compile(r"`([^`]+)`")


def _table(text: str, heading: str) -> list[tuple[str, str, str]]:
    """The rows (first cell, project cell, note) of the first table after ``## heading``."""
    section = text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 3, f"expected 3 cells: {line}"
        rows.append((cells[0], cells[1], cells[2]))
    return rows


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


@pytest.fixture(scope="module")
def flag_rows(doc):
    return _table(doc, "Flags")


@pytest.fixture(scope="module")
def encoder_rows(doc):
    return _table(doc, "Encoders")


def _model_of(annotation) -> type[BaseModel] | None:
    for t in (annotation, *typing.get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _field(root: type[BaseModel], dotted: str):
    """The pydantic field at ``dotted`` under ``root`` (walking nested models), or None."""
    model, parts = root, dotted.split(".")
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        if i == len(parts) - 1:
            return info
        model = _model_of(info.annotation)
    return None


def _check_ref(ref: str, cell_encoders: list[str]) -> None:
    key, sep, raw = ref.partition(": ")
    value = yaml.safe_load(raw) if sep else None
    if key.startswith("encoder_kwargs."):
        kw = key.split(".", 1)[1]
        candidates = cell_encoders or DINOPL_PORTS
        errors = []
        for enc in candidates:
            try:
                check_model_kwargs(enc, {kw: value if sep else None})
                return
            except ValueError as exc:
                errors.append(f"{enc}: {exc}")
        raise AssertionError(f"{ref!r} is taken by none of {candidates}: {errors}")
    if key.startswith("loss_params."):
        info = _field(loss_params_model("dino"), key.split(".", 1)[1])
    elif key.split(".")[0] in DinoParams.model_fields:
        info = _field(DinoParams, key)
    else:  # a key of the sweep file itself (resources.*, checkpoint.*, metric), outside params
        top = key.split(".")[0]
        assert top in SweepSpec.model_fields and top not in ("params", "search"), f"unknown key {key!r}"
        info = _field(SweepSpec, key)
    assert info is not None, f"unknown key {key!r}"
    if not sep:
        return
    if key == "encoder":
        assert is_known_model(value), f"{ref!r}: not a registered model"
    else:
        TypeAdapter(info.annotation).validate_python(value)


def _kind(cell: str) -> str:
    """'na', 'missing' or 'mapped'; a mapped cell is backticked refs separated by commas only."""
    if cell.startswith(NA):
        assert len(cell) > len(NA) + 3, f"no reason given: {cell!r}"
        return "na"
    if cell == "missing":
        return "missing"
    assert REF.findall(cell), f"neither a key, 'missing' nor 'not applicable: …': {cell!r}"
    assert REF.sub("", cell).replace(",", "").strip() == "", f"text outside the keys: {cell!r}"
    return "mapped"


def _check_cell(cell: str) -> str:
    kind = _kind(cell)
    if kind == "mapped":
        refs = REF.findall(cell)
        encoders = [r.partition(": ")[2] for r in refs if r.startswith("encoder: ")]
        for ref in refs:
            _check_ref(ref, encoders)
    return kind


def _counts(rows) -> dict[str, int]:
    counts = {"mapped": 0, "na": 0, "missing": 0}
    for _, cell, _ in rows:
        counts[_kind(cell)] += 1
    return counts


def test_flag_rows_are_dinopls_flags_in_order(flag_rows):
    assert len(DINOPL_FLAGS) == 72 and len(set(DINOPL_FLAGS)) == 72
    assert [f.strip("`") for f, _, _ in flag_rows] == DINOPL_FLAGS
    assert len(set(DINOPL_FLAGS) - NOT_IN_README) == 69  # the README's usage text
    for flag, _, note in flag_rows:
        assert ("not in README" in note) == (flag.strip("`") in NOT_IN_README), flag


def test_encoder_rows_are_dinopls_encoders_in_order(encoder_rows):
    assert len(DINOPL_ENCODERS) == 38 and len(set(DINOPL_ENCODERS)) == 38
    assert [e.strip("`") for e, _, _ in encoder_rows] == DINOPL_ENCODERS


def test_every_flag_cell_resolves(flag_rows):
    for flag, cell, _ in flag_rows:
        try:
            _check_cell(cell)
        except (AssertionError, ValueError) as exc:
            raise AssertionError(f"{flag}: {exc}") from exc


def test_every_encoder_cell_names_a_registered_encoder(encoder_rows):
    for name, cell, _ in encoder_rows:
        try:
            kind = _check_cell(cell)
        except (AssertionError, ValueError) as exc:
            raise AssertionError(f"{name}: {exc}") from exc
        if kind == "mapped":
            assert any(r.startswith("encoder: ") for r in REF.findall(cell)), f"{name}: no `encoder: …`"


def test_stated_counts_match_the_tables(doc, flag_rows, encoder_rows):
    f, e = _counts(flag_rows), _counts(encoder_rows)
    stated = (f"Counts: {len(flag_rows)} flags: {f['mapped']} mapped, {f['na']} not applicable, "
              f"{f['missing']} missing; {len(encoder_rows)} encoders: {e['mapped']} mapped")
    assert stated in doc, f"the doc's counts line should read: {stated}"
    # issue 15's acceptance: every flag and encoder has a key or a reason, none is left missing
    assert f["missing"] == 0 and e["missing"] == 0, [r[0] for r in flag_rows if _kind(r[1]) == "missing"]
    if e["na"] or e["missing"]:
        assert f"{e['na']} not applicable, {e['missing']} missing" in doc


def test_checker_rejects_unknown_keys():
    for bad in ("`head.nonexistent`", "`crops.nope`", "`loss_params.nope`", "`encoder: no_such_model`",
                "`encoder_kwargs.nope`", "`nope`", "`params.x`", "`teacher_mode: sometimes`", "maybe"):
        with pytest.raises((AssertionError, ValueError)):
            _check_cell(bad)
