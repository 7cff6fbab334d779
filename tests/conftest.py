"""Suite-wide hooks: only what every test file needs alike."""
from __future__ import annotations

import pytest
from fixtures_hypothesis import skip_broken_lazy_modules


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Hypothesis's plugin scans every loaded module's `__file__` once collection ends; a test module that imports
    speechbrain at collection (tests/test_ecapa.py) leaves lazy modules that raise there (fixtures_hypothesis)."""
    skip_broken_lazy_modules()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any property test, hide speechbrain's lazy modules from Hypothesis (fixtures_hypothesis): a property
    test may run after an ECAPA test in the same worker, whatever file it lives in."""
    if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
        skip_broken_lazy_modules()

