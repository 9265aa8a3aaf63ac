"""The main job on an embedded default: a demo dataset with many small fragments.

Builds ``demo-data/events.lance`` with pylance through many small appends (the
shape streaming writers leave behind) and shows what lance_assets sees.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pyarrow as pa

from lance_assets.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "demo-data"


def build_demo_dataset(path: Path, appends: int = 200, rows_per_append: int = 500) -> None:
    """Write ``appends`` small fragments of a mixed schema, as a streaming writer would."""
    import lance

    if path.exists():
        shutil.rmtree(path)
    for i in range(appends):
        start = i * rows_per_append
        ids = pa.array(range(start, start + rows_per_append), pa.int64())
        batch = pa.table(
            {
                "id": ids,
                "ts": pa.array([1_700_000_000_000_000 + j for j in range(start, start + rows_per_append)], pa.timestamp("us", tz="UTC")),
                "user": pa.array([f"user-{j % 97}" for j in range(start, start + rows_per_append)]),
                "score": pa.array([(j * 7919 % 1000) / 10 for j in range(start, start + rows_per_append)], pa.float64()),
                "tags": pa.array([[f"t{j % 5}", f"t{j % 3}"] for j in range(start, start + rows_per_append)], pa.list_(pa.string())),
            }
        )
        lance.write_dataset(batch, str(path), mode="append" if i else "create")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--appends", type=int, default=200)
    parser.add_argument("--rows-per-append", type=int, default=500)
    args = parser.parse_args()
    dataset = args.dir / "events.lance"
    print(f"building {dataset}: {args.appends} appends of {args.rows_per_append} rows")
    build_demo_dataset(dataset, args.appends, args.rows_per_append)
    return cli_main(["inspect", str(dataset), "--max-fragments", "10"])


if __name__ == "__main__":
    raise SystemExit(main())
