"""Named bundles of argument values: the official recipes (read-only built-ins)."""
