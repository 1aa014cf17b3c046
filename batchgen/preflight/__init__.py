"""Knowing before paying: what the service says of the key, its models, prices and credit.

This stage sits between the spec and the ledger. It asks the service a few GETs that an
ordinary key may call (:mod:`.facts`): the models this key may use, its quota and
usage, the site's display unit and exchange rate, the live price list (and, when they
answer, the admin routes: the balance and each model's channel). From those it works
out the price of each model in the spec's currency, with where it came from
(:mod:`.money`), and compares the job with them (:mod:`.check`): a model the key
cannot use, a balance below the job's remaining cost, a budget below one image.

It hands ``batchgen check`` its report, and the runner the prices to plan with (the
spec's override, else the live price, else the built-in table) and the refusals to
make before anything is paid. A route that is missing or fails is a warning naming
it; it never blocks a run on its own.
"""
