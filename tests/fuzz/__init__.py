"""atheris fuzz targets.

Run one as ``python -m tests.fuzz.<target> [libFuzzer options] [corpus]``.
"""
