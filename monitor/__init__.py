"""The post-deployment monitor: a daemon (`omnitune monitor serve`), its client, and the
recording proxy (`omnitune monitor proxy`) and ASGI middleware for OpenAI-compatible servers.

`Client` needs only the standard library; the daemon and the proxy need the `monitor` extra
(`pip install 'omnitune[monitor]'`: Starlette, uvicorn, httpx, prometheus-client, scipy).
"""

from omnitune.monitor.client import Client
from omnitune.monitor.middleware import MonitorMiddleware

__all__ = ["Client", "MonitorMiddleware"]
