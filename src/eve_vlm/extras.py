"""Optional dependencies come in pip extras (pyproject.toml's optional-dependencies): a feature
whose extra is missing says which one to install, not a bare ModuleNotFoundError."""

import contextlib

from .errors import MissingExtraError


@contextlib.contextmanager
def needs(extra: str, feature: str):
    """Imports inside the block come from the pip extra `extra`; `feature` ("eve serve") names what
    needs them. Wrap only third-party imports: a missing eve_vlm module is a bug, not an extra."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise MissingExtraError(extra, feature, exc.name) from exc


def pyplot(extra: str, feature: str):
    """matplotlib's pyplot on the Agg backend: plots are written to files, no display needed."""
    with needs(extra, feature):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    return plt
