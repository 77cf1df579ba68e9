"""The ground floor: settings, logging and the process-wide runtime (which Redis).

Imports nothing of ours."""
