"""Maintenance beside compaction: retention of old versions, index upkeep, and inspection."""
