"""Helpers shared by the tests, imported as ``tests.support.<module>``.

Kept free of imports: spawned children, executor subprocesses and the fuzzing campaign under an
address-space limit import single modules from here, and pay only for what they import.

- ``assertions``: tree digests, the CLI's one-line error contract, what a compaction must read back as;
- ``factory``: real datasets written by pylance, in every storage version and shape;
- ``writers``: other writers (pylance, our own compaction) in separate processes;
- ``fuzzing``: hostile bytes for every parser;
- ``nested``: random nested Arrow tables for property tests;
- ``dagster``: drives real Dagster machinery against real datasets;
- ``fanout_target``: job factories that Dagster's executors re-import by module name.
"""
