"""Installs the whole tree under one import root, `llenergymeasure`, with the folders
kept where DESIGN.md puts them: orchestrator/ -> llenergymeasure.orchestrator,
backends/ -> llenergymeasure.backends, datasets/ (data) -> llenergymeasure/datasets.
Metadata lives in pyproject.toml; only the package mapping is computed here."""

from setuptools import find_packages, setup

ROOTS = {"llenergymeasure.orchestrator": "orchestrator", "llenergymeasure.backends": "backends"}

packages = ["llenergymeasure", "llenergymeasure.datasets"]
for name, folder in ROOTS.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]

setup(
    packages=packages,
    package_dir={"llenergymeasure": "llenergymeasure", "llenergymeasure.datasets": "datasets", **ROOTS},
    package_data={
        "llenergymeasure.datasets": ["*.json", "*.md", "synthetic/*.txt"],
        "llenergymeasure.orchestrator.analysis": ["templates/*.j2"],
        "llenergymeasure.orchestrator.archive": ["templates/*"],
    },
)
