"""Native stderr capture: TensorFlow's C++ code (absl, oneDNN, CUDA stubs, the LiteRT
converter and interpreter, the SavedModel saver) writes to file descriptor 2 directly and
ignores TF_CPP_MIN_LOG_LEVEL, so the only way to keep it out of the terminal is to point
fd 2 elsewhere while it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import IO, Iterator


class CapturedStderr:
    """What was written to file descriptor 2 inside `captured_stderr()`."""

    def __init__(self, file: IO[bytes]):
        self._file = file

    def text(self) -> str:
        """Everything captured so far (readable only inside the `with` block)."""
        self._file.flush()
        self._file.seek(0)
        return self._file.read().decode(errors="replace")


@contextlib.contextmanager
def captured_stderr() -> Iterator[CapturedStderr]:
    """Points file descriptor 2 at a temporary file for the duration of the block; yields a
    `CapturedStderr` whose `text()` gives what was printed (for error messages)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield CapturedStderr(f)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow, Keras and KerasHub with their native start-up lines captured.
    What they printed is shown on stderr only if the import fails."""
    printed = ""
    try:
        with captured_stderr() as captured:
            try:
                import keras  # noqa: F401
                import keras_hub  # noqa: F401
                import tensorflow  # noqa: F401
            except BaseException:
                printed = captured.text()
                raise
    finally:
        if printed:
            sys.stderr.write(printed)
