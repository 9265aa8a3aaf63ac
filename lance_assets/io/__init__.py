"""Where bytes live: fsspec filesystems, ranged reads, create-if-absent writes.

Nothing here knows the Lance format; paths are relative to a dataset root.
"""

from lance_assets.io.storage import Storage

__all__ = ["Storage"]
