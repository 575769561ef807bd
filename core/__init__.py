"""The kernel every other package builds on: errors, config reading and overrides, and the
`omnitune` command's entry point with its shared parser helpers.

It imports no other omnitune package (import-linter's contracts in pyproject.toml hold it to
that), and nothing heavier than pydantic and PyYAML, so the monitor-only install and
`omnitune --help` load it without torch.
"""
