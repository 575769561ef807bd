"""The registry of served versions: `REGISTRY/MODEL/vN/` holds what a version serves (its
`adapter/` or `model/`), its run config, the gate report that let it in, and its reference
profile (the challenger's training mix, so drift is measured against what that version was
trained on). `REGISTRY/MODEL/versions.json` says which version serves and keeps the history
of promotions and rollbacks; it is replaced atomically, so a crash leaves the old or the new
state, never a half-written one."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnitune.core.errors import UsageError

#: What a version folder copies from its run, when the run has it.
VERSION_FILES = ("config.yaml", "reference.json", "summary.json")
WEIGHT_FOLDERS = ("adapter", "model")
STATE = "versions.json"


@dataclass
class Registry:
    root: Path
    model: str

    @property
    def folder(self) -> Path:
        return self.root / self.model

    def state(self) -> dict[str, Any]:
        path = self.folder / STATE
        if not path.is_file():
            return {
                "model": self.model,
                "serving": None,
                "canary": None,
                "versions": {},
                "history": [],
            }
        return json.loads(path.read_text())

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".{STATE}.tmp"
        with staging.open("w") as handle:
            handle.write(json.dumps(state, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, self.folder / STATE)

    def serving(self) -> tuple[str, dict[str, Any]] | None:
        state = self.state()
        name = state["serving"]
        return (name, state["versions"][name]) if name else None

    def stage(self, run: Path, gate: Path | None) -> tuple[str, Path]:
        """Copy `run`'s weights, config, reference and gate report into the next version's
        folder (not yet serving)."""
        state = self.state()
        number = 1 + max((int(v[1:]) for v in state["versions"]), default=0)
        name = f"v{number}"
        target = self.folder / name
        shutil.rmtree(target, ignore_errors=True)  # a staged copy a crash left behind
        target.mkdir(parents=True)
        weights = [f for f in WEIGHT_FOLDERS if (run / f).is_dir()]
        if not weights:
            raise UsageError(f"RUN: {run} has no adapter/ or model/ folder (did it finish?)")
        for folder in weights:
            shutil.copytree(run / folder, target / folder)
        for file in VERSION_FILES:
            if (run / file).is_file():
                shutil.copy2(run / file, target / file)
        if gate is not None:
            for file in ("gate.json", "gate.md"):
                shutil.copy2(gate / file, target / file)
        return name, target

    def record(self, state: dict[str, Any], action: str, version: str, **extra: Any) -> None:
        state["history"].append({"action": action, "version": version, "at": time.time(), **extra})


def read_gate(run: Path) -> dict[str, Any] | None:
    path = run / "gate" / "gate.json"
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Canary:
    """Where a canary's calls go: a share, and the challenger's server (or the name the
    champion's server knows its adapter by)."""

    share: float
    upstream: str | None = None
    served_as: str | None = None

    def proxy_section(self, version: str) -> dict[str, Any]:
        return {
            "share": self.share,
            "upstream": self.upstream,
            "model": self.served_as,
            "adapter": version,
        }


def promote(
    registry: Registry,
    run: Path,
    daemon: Any = None,
    force: bool = False,
    canary: Canary | None = None,
    proxy: Any = None,
) -> tuple[str, str]:
    """Make `run` the serving version, or with `canary` the canary beside it. Staged first,
    then the proxy (when given) routes the canary share to it or, on a full promotion of the
    canary, stops routing; the daemon (when given) takes the new serving version's reference;
    versions.json is written last. Returns (version, how it got in). Refused, with nothing
    changed, when the run's gate rejected it or compared it with another champion than the
    one serving; `force` overrides a rejection and says so in the history."""
    run = run.resolve()
    state = registry.state()
    state.setdefault("canary", None)
    how = _admission(registry, state, run, force)
    existing = state["canary"]
    if canary is None and existing and Path(state["versions"][existing]["run"]) == run:
        version, folder, staged = existing, registry.folder / existing, False  # canary -> full
    else:
        gate = read_gate(run)
        version, folder = registry.stage(run, run / "gate" if gate else None)
        staged = True
    try:
        if canary is not None:
            if proxy is not None:
                proxy.set_canary(canary.proxy_section(version))
        else:
            if daemon is not None:
                daemon.load_reference(registry.model, version, folder / "reference.json")
            if proxy is not None and existing:
                proxy.clear_canary()
    except Exception:
        if staged:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    entry = state["versions"].setdefault(version, {"run": str(run), "how": how})
    if canary is not None:
        entry.update(canary_share=canary.share, canary_since=time.time())
        state["canary"] = version
        registry.record(state, "canary", version, how=how, share=canary.share)
    else:
        entry.update(promoted_at=time.time(), previous=state["serving"])
        state["serving"], state["canary"] = version, None
        registry.record(state, "promote", version, how=how, replaced=entry["previous"])
    registry.save(state)
    return version, how


def _admission(registry: Registry, state: dict[str, Any], run: Path, force: bool) -> str:
    """How `run` may enter (first version, or its gate's word), or a UsageError why not."""
    current = state["serving"]
    gate = read_gate(run)
    if current is None:
        return "first version" if gate is None else f"gate: {gate['decision']}"
    served = state["versions"][current]
    if Path(served["run"]) == run:
        raise UsageError(f"RUN: {run} already serves as {registry.model} {current}")
    if gate is None:
        raise UsageError(
            f"RUN: {run} has no gate report (gate/gate.json): run omnitune loop gate "
            f"{served['run']} {run} first"
        )
    if Path(gate["champion"]).resolve() != Path(served["run"]):
        raise UsageError(
            f"RUN: its gate compared it with {gate['champion']}, but {registry.model} "
            f"serves {current} from {served['run']}: gate it against that run"
        )
    if gate["decision"] != "promote" and not force:
        raise UsageError(
            f"RUN: the gate rejected it ({'; '.join(gate['reasons'])}); --force promotes "
            "it anyway and records that"
        )
    return "gate: promote" if gate["decision"] == "promote" else "forced over a rejecting gate"


def rollback(registry: Registry, daemon: Any = None, proxy: Any = None) -> tuple[str, str]:
    """Withdraw the canary when there is one (the proxy stops routing to it); else serve the
    version that served before the current one. Returns (from, to)."""
    state = registry.state()
    current, canary = state["serving"], state.get("canary")
    if current is None:
        raise UsageError(f"MODEL: {registry.model} has no versions in {registry.root}")
    if canary:
        if proxy is not None:
            proxy.clear_canary()
        state["canary"] = None
        state["versions"][canary]["withdrawn_at"] = time.time()
        registry.record(state, "withdraw canary", canary)
        registry.save(state)
        return canary, current
    previous = state["versions"][current].get("previous")
    if previous is None:
        raise UsageError(
            f"MODEL: {registry.model} {current} is its first version: nothing to roll back to"
        )
    if daemon is not None:
        reference = registry.folder / previous / "reference.json"
        daemon.load_reference(registry.model, previous, reference)
    state["serving"] = previous
    registry.record(state, "rollback", previous, replaced=current)
    registry.save(state)
    return current, previous
