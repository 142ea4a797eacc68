"""How library code tells its caller something: one line of text at a time.

The CLI prints the lines; the library's callers may collect them instead. Every
function that has something to say takes a `notify: Notify`.
"""

from __future__ import annotations

from collections.abc import Callable

Notify = Callable[[str], None]
