import pytest

from faultkit import train_runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny runs, trained once per module; a test damages a copy (``trained.copy(tmp_path)``)."""
    return train_runs(tmp_path_factory.mktemp("trained") / "runs")
