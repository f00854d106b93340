"""``python -m biaskd.verify``: the command's name, kept where the README and published results cite
it; the tool is :mod:`biaskd.tools.verify`."""
import sys

from biaskd.tools.verify import main

if __name__ == "__main__":
    sys.exit(main())
