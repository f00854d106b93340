"""The ``biaskd`` command's former home (``biaskd.cli:main``), kept for the console script of an
install made before the command moved; the command is :mod:`biaskd.tools.cli`."""
from biaskd.tools.cli import main

if __name__ == "__main__":
    main()
