"""The closed loop as commands (`omnitune loop ...`): retune a champion on labelled captures
with replay, gate the challenger against it, and keep the served versions in a registry.

Modules, one job each: `settings.py` (the `loop` and `gate` sections), `labels.py` (the
labelled-captures folder `omnitune monitor export` writes), `replay.py` (the training mix and
its provenance), `retune.py`, `bootstrap.py` (paired bootstrap intervals), `gate.py`,
`registry.py`, `daemon.py` (the monitor daemon's HTTP API, as a user's script would call it),
`commands.py`.
"""
