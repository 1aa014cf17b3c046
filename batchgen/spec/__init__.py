"""The job spec: from a YAML file to validated, lazily expanded tasks.

This stage owns everything that can be known from the files alone, with no network:
YAML read with positions (:mod:`.yamlsrc`), the pydantic model of the format
(:mod:`.model`), row files and reference images (:mod:`.sources`), the matrix
definition and its combinations (:mod:`.combos`), prompt templates
(:mod:`.placeholders`), resolution and meaning checks (:mod:`.resolve`,
:mod:`.checks`), API keys refused in a spec (:mod:`.secrets`), generated axes and their
lockfile (:mod:`.lock`: reading and writing it; the chat calls that fill it are the
runner's), the loader that ties them together (:mod:`.load`), the lazy
expansion into tasks with stable keys (:mod:`.matrix`) and what ``validate`` and
``plan`` print (:mod:`.plan`).

It hands on a :class:`~batchgen.spec.load.Spec` (immutable, every problem already
reported as ``file:line:col``) and :func:`~batchgen.spec.matrix.expand`, a generator of
:class:`~batchgen.spec.matrix.PlannedTask` values that the ledger stores.
"""
