import pytest


@pytest.fixture(autouse=True)
def _isolated(kpe_clean_state):
    """Every test starts and ends with the same global policy state."""
    yield
