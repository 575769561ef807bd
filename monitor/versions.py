"""Reference versions: which drift baseline each model measures against after `omnitune loop
promote` (or rollback) gave the daemon a new one over `PUT /v1/models/MODEL/reference`.

A loaded profile is kept in a folder beside the store (`STORE-references/MODEL/VERSION.json`)
and `active.json` there names each model's current one; both are written to a staging name,
fsynced and renamed, before the daemon answers, so an acknowledged reference survives a crash
and a restart measures against it, not against the config file's `models.M.reference`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ReferenceVersions:
    def __init__(self, store_path: Path) -> None:
        self.folder = store_path.parent / f"{store_path.stem}-references"

    def active(self) -> dict[str, dict[str, str]]:
        """{model: {"version": ..., "path": ...}} of the references loaded over the API."""
        path = self.folder / "active.json"
        if not path.is_file():
            return {}
        return json.loads(path.read_text())

    def write_profile(self, model: str, version: str, profile: dict[str, Any]) -> Path:
        """The profile on disk (durably), where `load_reference` reads it; not yet active."""
        if not VERSION_NAME.match(version):
            raise ValueError(
                f"version: {version!r} is not a version name (letters, digits, . _ -; at most 64)"
            )
        path = self.folder / model / f"{version}.json"
        _write_durably(path, json.dumps(profile))
        return path

    def activate(self, model: str, version: str, path: Path) -> None:
        active = self.active()
        active[model] = {"version": version, "path": str(path)}
        _write_durably(self.folder / "active.json", json.dumps(active, indent=2))


def _write_durably(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
