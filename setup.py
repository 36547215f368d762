"""recpipe: a nightly, distributed recommendation pipeline (see README.md)."""

from setuptools import find_packages, setup

setup(
    name="recpipe",
    version="0.1.0",
    description="Nightly recommendation pipeline: Spark ETL, ALS candidates, DDP attention ranker, MLflow gate",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    python_requires=">=3.10",
    # Versions are pinned in constraints.txt; a wheel shipped with --py-files
    # relies on the executors' environment, so these are the names only.
    install_requires=[
        "numpy",
        "pandas",
        "pyarrow",
        "pyyaml",
    ],
    entry_points={"console_scripts": ["recpipe=recpipe.cli:main"]},
)
