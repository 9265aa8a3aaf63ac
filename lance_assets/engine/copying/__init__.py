"""Copying: one task's inputs written as one new data file.

v2 files page by page, legacy files batch by batch (and re-paged), blob sidecars, and small
pages re-cut by the copy itself or re-encoded by pylance's writer.
"""
