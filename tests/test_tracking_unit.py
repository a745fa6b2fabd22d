import pytest

from orchestrator.errors import UserError
from orchestrator.store.tracking import check_tracking_uri, normalise_tracking_uri


def test_uris_are_made_absolute(tmp_path):
    assert normalise_tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert normalise_tracking_uri("sqlite:///rel.db", str(tmp_path)) == f"sqlite:///{tmp_path}/rel.db"
    assert normalise_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_file_store_is_refused_with_advice():
    with pytest.raises(UserError, match="use an sqlite:///path/to/mlflow.db file or an http"):
        normalise_tracking_uri("./mlruns")


def test_unreachable_server_fails_fast():
    with pytest.raises(UserError, match=r"the MLflow server at http://127.0.0.1:9 is unreachable"):
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2)


def test_missing_sqlite_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/nope/mlflow.db")
