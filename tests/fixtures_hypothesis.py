"""Hypothesis beside speechbrain in one process: Hypothesis (6.170) reads `__file__` of every module in sys.modules to
collect constants, and speechbrain's lazy modules (speechbrain.integrations.*) answer that with an ImportError when
their optional dependency (transformers, ...) is missing. Any property test that runs after a test which imported
speechbrain (an ECAPA model) would fail on it; `skip_broken_lazy_modules` marks those modules as already seen."""
from __future__ import annotations

import sys


def skip_broken_lazy_modules() -> None:
    """Mark every module whose `__file__` cannot be read as scanned, so that Hypothesis never touches it."""
    from hypothesis.internal.conjecture import providers

    seen = getattr(providers, "_seen_modules", None)
    if seen is None:  # another Hypothesis release: its constant scan is not this one, nothing to hide
        return
    for module in list(sys.modules.values()):
        try:
            getattr(module, "__file__", None)
        except Exception:  # noqa: BLE001 - speechbrain's LazyModule raises ImportError here
            seen.add(id(module))
