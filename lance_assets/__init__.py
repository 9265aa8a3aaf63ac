"""Keep Lance datasets compact by binary copy, from Python, the terminal or Dagster.

>>> from lance_assets import CompactionOptions, compact
>>> report = compact("data/events.lance", CompactionOptions(target_rows_per_fragment=1_000_000))  # doctest: +SKIP

The engine's entry points are re-exported here; the Dagster layer is ``lance_assets.dagster``.
"""

__version__ = "0.1.0"

# __version__ is set first: the engine stamps it into the manifests it writes.
from lance_assets import engine
from lance_assets.engine import *  # noqa: F403 - the engine's public names are the package's
from lance_assets.errors import LanceAssetsError

__all__ = [*engine.__all__, "LanceAssetsError", "__version__"]
