"""`make demo` (`python -m scripts.demo`): the main omnitune job, offline; see run.py.

Not part of the installed library: the demo's steps, traffic and summary live here, with the
one data writer only the demo needs (data.py).
"""
