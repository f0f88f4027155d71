"""`tftune.runtime.quiet`: native writes to file descriptor 2 are captured, and shown only
when an import fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tftune.runtime.quiet import captured_stderr


def test_writes_to_fd_2_are_captured_and_fd_2_is_restored(capfd):
    with captured_stderr() as captured:
        os.write(2, b"INFO: native line\n")
        assert captured.text() == "INFO: native line\n"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_fd_2_is_restored_when_the_block_raises(capfd):
    try:
        with captured_stderr():
            os.write(2, b"lost\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def _fake_modules(root: Path, keras_body: str) -> None:
    """Stand-ins for keras, keras_hub and tensorflow that write to fd 2 natively on import."""
    for name, body in (("keras", keras_body), ("keras_hub", ""), ("tensorflow", "")):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(
            f"import os\nos.write(2, b'{name}: native start-up line\\n')\n{body}\n")


def _import_quietly(root: Path) -> subprocess.CompletedProcess:
    code = "from tftune.runtime.quiet import import_tensorflow_quietly\nimport_tensorflow_quietly()"
    worktree = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(worktree)])}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_import_tensorflow_quietly_prints_nothing_when_the_import_works(tmp_path):
    _fake_modules(tmp_path, "")
    proc = _import_quietly(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_import_tensorflow_quietly_shows_what_was_printed_when_the_import_fails(tmp_path):
    _fake_modules(tmp_path, textwrap.dedent("""
        os.write(2, b'keras: the reason it failed\\n')
        raise ImportError('broken keras')
    """))
    proc = _import_quietly(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("keras: native start-up line\nkeras: the reason it failed\n")
    assert "ImportError: broken keras" in proc.stderr
