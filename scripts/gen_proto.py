"""Regenerate lance_assets/_proto from proto/*.proto.

Run: ``python scripts/gen_proto.py`` (needs grpcio-tools, a test dependency).
The generated modules are committed so that users never need protoc; a test
regenerates them into a temporary directory and fails if they differ.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "lance_assets" / "_proto"

HEADER = '"""Generated from proto/ by scripts/gen_proto.py. Do not edit."""\n'


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into ``out_dir`` with package-relative imports."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    local = {Path(p).stem + "_pb2" for p in protos}
    written: list[Path] = []
    for path in sorted(out_dir.glob("*_pb2.py*")):
        text = path.read_text()
        # protoc emits top-level imports for sibling protos; make them package-relative.
        text = re.sub(
            r"^import (\w+_pb2)( as \w+)?$",
            lambda m: f"from . import {m.group(1)}{m.group(2) or ''}" if m.group(1) in local else m.group(0),
            text,
            flags=re.M,
        )
        path.write_text(text)
        written.append(path)
    (out_dir / "__init__.py").write_text(HEADER)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report whether the committed modules are current")
    args = parser.parse_args()
    if not args.check:
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        stale = [
            p.name
            for p in sorted(fresh.iterdir())
            if not (OUT_DIR / p.name).exists() or (OUT_DIR / p.name).read_bytes() != p.read_bytes()
        ]
        # modules whose .proto was removed are stale too
        stale += [p.name for p in sorted(OUT_DIR.glob("*_pb2.py*")) if not (fresh / p.name).exists()]
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
