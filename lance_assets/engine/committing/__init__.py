"""Committing: the new files become one new dataset version that Lance accepts (indices kept covering the moved rows)."""
