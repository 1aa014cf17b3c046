"""The output tree: files on disk, fetched safely, named safely, listed in a manifest.

This stage owns the job's output folder: safe file names from the layout template,
atomic writes, ``metadata.jsonl`` and ``summary.json`` (:mod:`.tree`), the
credential-free downloader that streams a result URL into it and verifies the bytes
(:mod:`.fetch`), the parameters written into saved images with ``embed: parameters``
(:mod:`.embed`), and the ``README.md`` dataset card (:mod:`.card`).

It takes result URLs (or inline bytes) and a layout path from the runner and hands
back a :class:`~batchgen.output.fetch.SavedImage` (path, size, sha256, dimensions),
which the runner records in the ledger.
"""
