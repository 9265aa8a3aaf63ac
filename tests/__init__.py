"""The test suite, a package so its modules import as ``tests.<area>.test_x``.

Test folders mirror ``lance_assets/`` (format, io, engine, dagster, cli). Being subpackages of
``tests``, ``tests/dagster`` and ``tests/io`` never shadow the real ``dagster`` package or the
stdlib ``io``: only the repository root is on ``sys.path`` (``pythonpath = ["."]``), never a test folder.
"""
