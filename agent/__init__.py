"""The agent's side: the WWE softphone-connector bridge (`python -m agent`) and the
JsSIP web phone page it serves and drives (agent/web)."""
