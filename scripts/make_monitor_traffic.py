"""Write a reference profile and recorded traffic for trying the monitor (docs/monitor.md).

    python scripts/make_monitor_traffic.py runs/monitor-demo

writes runs/monitor-demo/reference.json (as `omnitune train` writes one) and
runs/monitor-demo/traffic.jsonl: 2,000 events of a text assistant whose users start shouting
half way through, with answers that leak PII every 40th event and a jailbreak attempt every 45th.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omnitune.monitor import traffic


def main(folder: str) -> None:
    out = Path(folder)
    traffic.write_reference(out / "reference.json")
    events, planted = traffic.make_events(2000, shift_from=1000, pii_every=40, jailbreak_every=45)
    traffic.write_events(out / "traffic.jsonl", events)
    pii = ", ".join(f"{k} {v}" for k, v in sorted(planted.pii.items()))
    print(f"{out}/reference.json, {out}/traffic.jsonl: 2000 events, shift from event 1000; ")
    print(f"planted PII in outputs: {pii}; jailbreak inputs: {planted.jailbreak}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/monitor-demo")
