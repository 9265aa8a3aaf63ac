"""Keep Lance datasets compact by binary copy, from Python, the terminal or Dagster.

>>> from lance_assets import CompactionOptions, compact
>>> report = compact("data/events.lance", CompactionOptions(target_rows_per_fragment=1_000_000))  # doctest: +SKIP

The engine's entry points are re-exported here, loaded on first use so that importing the
package (or ``lance_assets.cli``) stays cheap; the Dagster layer is ``lance_assets.dagster``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# __version__ is set first: the engine stamps it into the manifests it writes.
from lance_assets import engine
from lance_assets.errors import LanceAssetsError

# The engine logs to "lance_assets.<module>" (plan decisions, retries, skipped groups, cleanup,
# index upkeep); a library prints nothing unless the application configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from lance_assets.engine import *  # noqa: F403 - the engine's public names are the package's

__all__ = [*engine.__all__, "LanceAssetsError", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in engine.__all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(engine, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
