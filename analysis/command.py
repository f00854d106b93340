"""How the analysis commands end on the project's own errors: one line, ``error: Type: message``,
exit status 2 (as the ``biaskd`` command does); ``BIASKD_VERBOSE=1`` shows the traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from biaskd.errors import BiaskdError


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``'s exit status; a :class:`BiaskdError` (a bad run dir, a missing file) is
    printed as one line instead of a traceback."""
    try:
        return main(argv)
    except BiaskdError as exc:
        if os.environ.get("BIASKD_VERBOSE") == "1":
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
