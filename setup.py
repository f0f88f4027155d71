"""Packaging: the metadata is in setup.cfg. This file only maps the repository's top-level
`recipes/` and `assets/` folders into the package (as `tftune.recipes` and
`tftune.assets.bundled`), so the bundled recipe files, the asset manifest and the sample
inputs ship in the wheel and are read with `importlib.resources`."""

from setuptools import find_packages, setup

DATA_PACKAGES = {"tftune.recipes": "recipes", "tftune.assets.bundled": "assets"}

setup(
    packages=find_packages(include=["tftune", "tftune.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={
        "tftune.recipes": ["*.yaml", "sweeps/*.yaml"],
        "tftune.assets.bundled": ["*.yaml", "samples/**/*"],
    },
)
