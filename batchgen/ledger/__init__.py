"""The ledger: one SQLite file per job, the single source of truth for every task.

This stage owns the file and everything read from or written to it: the schema and
its named migrations, the group-committing writer (:mod:`.store`), and the commands
that read or amend a job's ledger outside a run: ``status``, ``retry`` and
``export`` (:mod:`.report`).

It takes the spec's planned tasks (:meth:`~batchgen.ledger.store.Ledger.sync`) and
hands the runner pages of rows by state; the runner hands back
:class:`~batchgen.ledger.store.Transition` values, each committed before the action it
allows.
"""
