"""Talking to the service: the client, its typed answers, and what we know of its models.

This stage owns the wire: one :class:`~batchgen.api.client.CobabaClient` per run
(every route of the API, the key only in its headers; :mod:`.client`), the credentials,
timeouts and base URL it is built from (:mod:`.auth`), the translation of every HTTP
answer into a typed value (:mod:`.responses`) or one error of :mod:`batchgen.errors`
(:mod:`.wire`: transport failures, status and body codes, ``Retry-After``, event
streams, log redaction), and the catalog of models, accepted values and table prices
(:mod:`.catalog`).

It knows nothing of jobs, ledgers or files: the runner hands it a request body and gets
back a :class:`~batchgen.api.responses.Submission`, a
:class:`~batchgen.api.responses.TaskInfo` or an error whose ``accepted`` and
``retryable`` flags say what may have happened at the service.
"""
