"""The closed loop as commands (`omnitune loop ...`): retune a champion on labelled captures
with replay, gate the challenger against it, and keep the served versions in a registry.

Modules, one job each: `settings.py` (the `loop` and `gate` sections), `labels.py` (the
labelled-captures folder `omnitune monitor export` writes), `replay.py` (the training mix and
its provenance), `retune.py`, `bootstrap.py` (paired bootstrap intervals), `gate.py`,
`registry.py`, `services.py` (the monitor daemon's and the proxy's HTTP APIs, called as a
user's script would), `commands.py`.
"""
