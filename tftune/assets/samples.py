"""Small sample inputs that ship inside the package (the repository's `assets/samples/`,
installed as package data of `tftune.assets.bundled`): a few review texts and a few images,
for trying `tftune predict` / `tftune evaluate` and for tests. See `assets/README.md`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path, PurePosixPath

from tftune.assets.manifest import BUNDLED_PACKAGE, unknown_name
from tftune.errors import AssetError


def samples_dir() -> Path:
    """The installed folder of the sample inputs.

    Raises AssetError when tftune is installed in a way that keeps package data off the
    file system (say, imported from a zip file).
    """
    folder = importlib.resources.files(BUNDLED_PACKAGE).joinpath("samples")
    if not isinstance(folder, Path):
        raise AssetError(
            f"The sample inputs of tftune are not files on disk here ({folder!r}); install tftune "
            f"from a wheel or a source checkout to use them."
        )
    return folder


def list_samples() -> list[str]:
    """The sample files, as POSIX paths relative to `samples_dir()`, sorted."""
    folder = samples_dir()
    if not folder.is_dir():
        return []
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith((".", "__"))
    )


def sample_path(name: str) -> Path:
    """The installed path of sample `name` (a file such as `reviews.txt` or
    `images/sneaker.png`, or the folder `images`).

    Raises AssetError naming the known samples (and the closest one) for an unknown name.
    """
    parts = PurePosixPath(name).parts
    if not name or ".." in parts or "\\" in name or PurePosixPath(name).is_absolute():
        raise AssetError(
            f"Invalid sample name {name!r}: expected a path inside the samples folder, such as "
            f"'reviews.txt' or 'images'."
        )
    target = samples_dir().joinpath(*parts)
    if not target.exists():
        raise unknown_name("sample", name, list_samples())
    return target
