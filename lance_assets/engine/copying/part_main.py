"""The helper process of ``parts``: ``python -m lance_assets.engine.copying.part_main``.

Reads its request (one JSON line: the dataset and how the output is laid out), opens the dataset
and says it is ready; then reads its share of the inputs (a second line; none when it is not
needed) and writes them as a part file, reporting what ``copy.PartJob.write`` returns. Every
failure is reported as an ``error`` line (and the process exits non-zero): the task then copies
the share itself, so a message here never reaches a user unless the task meets it too.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    try:
        from lance_assets.engine.copying.copy import PartJob
        from lance_assets.engine.copying.parts import tune_allocator
        from lance_assets.format import miniblock  # noqa: F401 (numpy: loaded before the share arrives)

        tune_allocator()
        job = PartJob.open(json.loads(sys.stdin.readline()))
        _say({"ready": True})
        line = sys.stdin.readline()
        if not line.strip():
            return 0  # not needed after all
        _say({"result": job.write(json.loads(line))})
        return 0
    except Exception as exc:  # reported to the task, which copies the share itself
        _say({"error": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
