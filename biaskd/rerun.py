"""``python -m biaskd.rerun``: the command's name, kept where the README and published results cite
it; the tool is :mod:`biaskd.tools.rerun`."""
import sys

from biaskd.tools.rerun import main

if __name__ == "__main__":
    sys.exit(main())
