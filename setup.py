"""spkcausal: long-tail aware speaker verification (Causal Norm training + TDE inference)."""
from setuptools import find_packages, setup

setup(
    name="spkcausal",
    version="0.1.0",
    description="Speaker verification toolkit for long-tailed corpora: Causal Norm heads and TDE inference",
    packages=find_packages(include=["spkcausal", "spkcausal.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchaudio==2.11.0",
        "speechbrain==1.1.2",
        "soundfile",
        "numpy",
        "scipy",
        "scikit-learn",
        "matplotlib",
        "av",
        "kaldiio",
        "pyyaml",
        "tqdm",
        "tensorboard",
    ],
    # dev: the test suite, ruff, mypy (with the stubs of the typed-elsewhere packages spkcausal imports) and
    # import-linter (the layer contracts in pyproject.toml) for .ci/run; statsmodels, the independent check of
    # the tail-cost power figures (spkcausal.results.power).
    # export: ONNX files and onnxruntime parity / speed (TorchScript needs nothing extra); the test suite runs
    # the parity tests, so dev includes it.
    # docs: the documentation site (mkdocs.yml; .ci/run builds it with --strict), versions it was built with.
    extras_require={"export": ["onnx", "onnxruntime"],
                    "dev": ["pytest", "pytest-xdist", "hypothesis", "ruff", "onnx", "onnxruntime", "import-linter",
                            "mypy", "types-PyYAML", "types-tqdm", "statsmodels"],
                    "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.29,<2"]},
    entry_points={"console_scripts": ["spkcausal=spkcausal.cli:main"]},
)
