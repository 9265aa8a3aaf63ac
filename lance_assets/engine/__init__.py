"""What compaction means: opening datasets, planning, copying, committing, reporting.

Uses ``format`` and ``io``; knows nothing of Dagster or the terminal.
"""
