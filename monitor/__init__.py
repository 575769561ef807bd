"""The post-deployment monitor: a daemon (`omnitune monitor serve`) and its client.

`Client` needs only the standard library; the daemon needs the `monitor` extra
(`pip install 'omnitune[monitor]'`: Starlette, uvicorn, prometheus-client, scipy).
"""

from omnitune.monitor.client import Client

__all__ = ["Client"]
