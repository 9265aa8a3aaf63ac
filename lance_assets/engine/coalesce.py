"""Coalescing small pages: which columns may be re-encoded into large pages, and by what.

Binary copy turns every small input file into one small page per column of the output
(``format.pages``); Lance's reader pays per page. With ``pages="coalesce"`` (the default) the
copy re-encodes the columns made of many small pages -- and only those -- with pylance's file
writer (``lance.file.LanceFileWriter``) into a temporary file of the same file version, and
copies that file's pages into the output in place of the small ones. Every other column is
still copied byte for byte. The planner uses the same rules to pick fragments at target size
whose columns are worth healing, so it never picks what the copy would leave as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

from lance_assets._proto import file_pb2
from lance_assets.engine.options import PAGES_COPY, CompactionOptions
from lance_assets.engine.reencode import pylance_available
from lance_assets.format import repdef
from lance_assets.format.v2file import FileVersion, is_blob_field


def coalescible_fields(fields: Sequence[file_pb2.Field], version: FileVersion) -> frozenset[int]:
    """Ids of the fields whose columns pylance may rewrite: every field of a top-level field's
    subtree, unless the subtree holds a blob field (its pages are descriptors, rewritten by
    ``blob_copy``) or a guarded nested field (pylance 14 misreads some such values it wrote in
    one go, see ``reencode``; their pages keep the layer rule by being copied)."""
    guarded = repdef.guarded_field_ids(fields, version)
    by_id = {f.id: f for f in fields}

    def top(f: file_pb2.Field) -> int:
        while f.parent_id != -1 and f.parent_id in by_id:
            f = by_id[f.parent_id]
        return f.id

    tops = {f.id: top(f) for f in fields}
    refused = {tops[f.id] for f in fields if f.id in guarded or is_blob_field(f)}
    return frozenset(fid for fid, t in tops.items() if t not in refused)


def why_not_coalesce(fields: Sequence[file_pb2.Field], options: CompactionOptions) -> str:
    """Why small pages of this dataset cannot be coalesced ("" when they can)."""
    if options.pages == PAGES_COPY:
        return "pages='copy' keeps every page as it is"
    if any(is_blob_field(f) for f in fields):
        return "datasets with blob columns are binary-copied page by page"
    if not pylance_available():
        return "coalescing small pages needs pylance: pip install 'lance_assets[reencode]'"
    return ""
