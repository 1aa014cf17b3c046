"""Scripts a user writes by hand, run against the same simulator and job as batchgen.

Each is standalone (asyncio, httpx and tenacity only: no batchgen import) and reads
the job as ``batchgen plan --json`` prints it, one task per line.
"""
