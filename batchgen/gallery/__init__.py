"""The gallery: a job's images on labelled grids, as an offline HTML page.

This stage reads a finished (or running) job's ledger and output tree and owns
everything derived from them for people to look at: the grid model over two axes with
the others as filters (:mod:`.model`, pure data), the HTML (:mod:`.html`),
thumbnails and contact sheets (:mod:`.sheet`), and the command that builds them
incrementally (:mod:`.build`). It writes ``index.html`` (and ``index-2.html``, ...
for a large job), ``thumbs/`` and, when asked, ``contact-sheets/`` into the output
folder, and changes nothing else.
"""
