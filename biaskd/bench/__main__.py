"""``python -m biaskd.bench [--quick]``: :func:`biaskd.bench.tables.main`."""
from biaskd.bench.tables import main

main()
