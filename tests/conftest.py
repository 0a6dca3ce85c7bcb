"""Fixtures shared by every test folder."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# ../shared/ is beside the checkout in development and CI, never in a user's clone.
SHARED_REFERENCE = ROOT.parent / "shared" / "reference" / "melange-paper"


@pytest.fixture
def paper_data() -> Path:
    """The Mélange paper's public data folder; skips when this checkout has no ../shared/."""
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"reference data not present at {SHARED_REFERENCE} (it lives in ../shared/, not in the repo)")
    return SHARED_REFERENCE
