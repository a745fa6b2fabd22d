"""The test process leaves through ``os._exit`` once pytest has reported (tests/conftest.py):
it must still exit with pytest's own status, after pytest's summary."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("body, status, summary", [
    ("def test_a():\n    assert 1 == 2\n", 1, "1 failed"),
    ("def test_a():\n    assert 1 == 1\n", 0, "1 passed"),
    ("def test_a():\n    raise KeyboardInterrupt\n", 2, "KeyboardInterrupt"),
    ("", 5, "no tests ran"),
])
def test_the_exit_status_is_pytests(tmp_path, body, status, summary):
    (tmp_path / "test_case.py").write_text(body)
    # Our conftest loaded as a plugin into a pytest of a scratch directory; the marker file shows
    # the os._exit path was the one taken (it prints nothing of its own).
    # The marker's handler is registered first, so it runs last; the script itself exits 0.
    code = ("import atexit, sys; sys.path.insert(0, sys.argv[1]); import pytest; "
            "atexit.register(lambda: open(sys.argv[3], 'w').write('teardown ran')); "
            "pytest.main(['-p', 'conftest', '-p', 'no:cacheprovider', sys.argv[2]])")
    marker = tmp_path / "teardown"
    out = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "tests"), str(tmp_path / "test_case.py"),
                          str(marker)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "W2S_TEST_FULL_TEARDOWN": ""})
    assert out.returncode == status, out.stdout + out.stderr
    assert summary in out.stdout
    assert not marker.exists(), "the interpreter's own exit ran: os._exit was not taken"
