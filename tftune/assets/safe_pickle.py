"""Reading a pickle that may have come from anywhere, without running its code.

A pickle names the callables it wants (`module.name`) and the unpickler calls them: an
ordinary `pickle.load` of a downloaded file can run `os.system`. `load_restricted` looks every
name up in an explicit table instead, and refuses any name not in it before anything is
called. The table maps names to small stand-ins that only record their arguments, so what a
pickle builds is plain data for the caller to check.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from typing import IO, Any

from tftune.errors import AssetError


class _Restricted(pickle.Unpickler):
    def __init__(self, stream: IO[bytes], allowed: Mapping[tuple[str, str], Callable[..., Any]],
                 where: str) -> None:
        super().__init__(stream)
        self._allowed = allowed
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise AssetError(
                f"{self._where} asks to call {module}.{name}, which is not among the names this "
                f"reader allows ({', '.join(sorted(f'{m}.{n}' for m, n in self._allowed))}); "
                f"nothing in it was run. The file is not the one the manifest describes."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise AssetError(f"{self._where} uses persistent ids ({pid!r}), which this reader refuses.")


def load_restricted(stream: IO[bytes], allowed: Mapping[tuple[str, str], Callable[..., Any]],
                    where: str) -> Any:
    """Unpickle `stream`, resolving each global `(module, name)` through `allowed` only.

    Any other global raises AssetError (naming it and `where`) before it is called. Malformed
    data raises AssetError too.
    """
    try:
        return _Restricted(stream, allowed, where).load()
    except AssetError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError,
            KeyError) as exc:
        raise AssetError(f"{where} is not a pickle this reader understands: {exc}.") from None
