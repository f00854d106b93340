"""``python -m biaskd.bench [--quick]``: :func:`biaskd.bench.tables.main`."""
from biaskd.bench.tables import main

if __name__ == "__main__":
    main()
