"""Presets and policy: the official recipes (read-only built-ins), who a user is and what each may
see or change."""
