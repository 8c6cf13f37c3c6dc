"""Which `bits` values can load a base model. 16 is the unquantized base in the run's dtype;
the bitsandbytes 8- and 4-bit paths register here when they land (issue 3)."""

from __future__ import annotations

IMPLEMENTED_BITS = frozenset({"16"})
PENDING_NOTE = "not implemented yet (bitsandbytes 8- and 4-bit bases land with issue 3)"
