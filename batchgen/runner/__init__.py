"""A run of a job: start-up, the submit / poll / download stages, pacing, the end.

This stage owns what happens between opening a job's ledger and writing its summary:
the orchestration of one run (:mod:`.job`: recovery, sync, the stages, the manifest),
the stages themselves around their shared run state (:mod:`.pipeline`), the pacing
under the service's limits (:mod:`.throttle`), the chat calls that write generated
axes' values and the lock they go into (:mod:`.generate`, :mod:`.locking`: ``batchgen
lock``, and a run's first step when a spec is not locked yet), and the progress hook
through which everything reaches the user (:mod:`.progress`).

It takes a :class:`~batchgen.spec.load.Spec`, a ledger and a client, and hands the
output tree saved images plus a :class:`~batchgen.runner.job.RunSummary`. (The package
is ``runner``, not ``run``: ``batchgen.run`` is the public function, and a subpackage
of that name would replace it on the package as soon as it was imported.)
"""
