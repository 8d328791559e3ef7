"""Jitted functions kept for the next run in the same process.

A sweep (and the test suite) trains many runs of one shape in one process. Each run builds its
model, objective and input functions anew; jitting fresh closures every run traces, lowers and
compiles each program again (the persistent compilation cache only saves the last part, and only
for programs that took long to compile): on 2 CPU cores that was about 2 s of a 16-s run of the
embedded default. `get(key, build)` returns what `build()` made for the first caller with `key` —
a tuple that determines what it computes (the config's JSON, the mesh, the sizes it closes over) —
so a later run calls the same jitted function and JAX's in-memory cache serves its compiled
programs. Functions whose closed-over values are hashable take them as static arguments instead
(e.g. `evaluate.encode_runs`'s model) and need no entry here.

The last `KEPT` entries are kept (each holds its compiled programs); `clear()` drops them and
JAX's own caches (the sweep calls it between shapes).
"""
import collections
from typing import Any, Callable, Hashable

import jax

KEPT = 32
_ENTRIES: "collections.OrderedDict[Hashable, Any]" = collections.OrderedDict()


def get(key: Hashable, build: Callable[[], Any]) -> Any:
  """`build()`'s result for `key`, made on the first call with `key` and kept."""
  if key not in _ENTRIES:
    _ENTRIES[key] = build()
    while len(_ENTRIES) > KEPT:
      _ENTRIES.popitem(last=False)
  _ENTRIES.move_to_end(key)
  return _ENTRIES[key]


def clear() -> None:
  """Forget the kept functions and JAX's compiled programs (`jax.clear_caches`)."""
  _ENTRIES.clear()
  jax.clear_caches()
