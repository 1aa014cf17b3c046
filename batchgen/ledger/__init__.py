"""The ledger: one SQLite file per job, the single source of truth for every task.

This stage owns the file and everything read from or written to it: the schema, its
named migrations and the row types (:mod:`.schema`), the ledger with its
group-committing writer, runs and meta (:mod:`.store`), syncing the spec and bulk
state changes (:mod:`.sync`), reads (:mod:`.reads`), the chat calls of generated axes
(:mod:`.chats`), the typed base those share (:mod:`.base`), and the commands that read
or amend a job's ledger outside a run: ``status``, ``retry`` and ``export`` (with the
manifest's rows and the dataset card's facts; :mod:`.report`).

It takes the spec's planned tasks (:meth:`~batchgen.ledger.store.Ledger.sync`) and
hands the runner pages of rows by state; the runner hands back
:class:`~batchgen.ledger.schema.Transition` values, each committed before the action it
allows.
"""
