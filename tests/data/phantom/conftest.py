"""A phantom shared by the tests of its anatomy and grid."""

from __future__ import annotations

import pytest

from vesselfm.data.phantom import Phantom, generate_phantom


@pytest.fixture(scope="session")
def case128() -> Phantom:
    """A 128x128x96 case with three plaques and two stenoses."""
    return generate_phantom((128, 128, 96), seed=3, calcifications=3, stenoses=2)
