"""The post-deployment monitor: daemon, detectors, Prometheus exposition and client.

Installable without torch (`pip install 'omnitune[monitor]'`).
"""
