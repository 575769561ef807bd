"""PUT /v1/models/MODEL/reference: the daemon measures drift against a new version's
reference without a restart, keeps it across one, and refuses anyone without the token."""

from __future__ import annotations

import json
import random

from omnitune.modalities.profile import build_profile
from omnitune.modalities.text.features import text_features
from omnitune.monitor import traffic
from tests.monitor.conftest import start_daemon
from tests.monitor.test_drift_alarms import post_in_batches


def shouting_profile() -> dict:
    """The profile of a version trained on the shifted traffic (a third of words in capitals)."""
    rng = random.Random(9)
    rows = (text_features(traffic.prompt(rng, shouting=1 / 3)) for _ in range(2000))
    return build_profile("text", rows, "runs/assistant-v2/loop/train.jsonl")


def put(daemon, model: str, body: object, token: str | None = "s3cret") -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}
    return daemon.request("PUT", f"/v1/models/{model}/reference", json.dumps(body), headers=headers)


def test_a_new_reference_replaces_the_baseline_live_and_survives_a_restart(monitor_config):
    config = monitor_config(server={"token": "s3cret"})
    daemon = start_daemon(config, token="s3cret")
    try:
        quiet, _ = traffic.make_events(300, seed=3)
        post_in_batches(daemon, quiet)
        shouting, _ = traffic.make_events(500, seed=4, shift_from=0, start_ts=1.8e9 + 3)
        post_in_batches(daemon, shouting, size=20)
        before = daemon.evaluated()["models"]["assistant"]
        assert before["drifting"] and before["reference_version"] == "config"

        code, answer = put(daemon, "assistant", {"version": "v2", "profile": shouting_profile()})
        assert code == 200, answer
        assert answer["version"] == "v2" and "upper_ratio" in answer["features"]
        assert answer["window"] == 400  # refilled from the store's newest events
        after = daemon.evaluated()["models"]["assistant"]
        assert after["reference_version"] == "v2" and not after["drifting"]
        assert after["events_total"] == before["events_total"]  # nothing lost or replayed

        profile = shouting_profile()
        assert put(daemon, "nobody", {"version": "v2", "profile": profile})[0] == 404
        code, answer = put(daemon, "assistant", {"version": "v 3", "profile": profile})
        assert code == 400 and "not a version name" in answer["error"]
        code, answer = put(daemon, "assistant", {"version": "v3", "profile": {"rows": []}})
        assert code == 400 and answer["error"].startswith("profile:")
        speech = {**profile, "modality": "speech"}
        code, answer = put(daemon, "assistant", {"version": "v3", "profile": speech})
        assert code == 400 and "profiles speech inputs" in answer["error"], answer
        assert put(daemon, "assistant", {"version": "v3", "profile": profile}, "wrong")[0] == 403
        assert put(daemon, "assistant", {"version": "v3", "profile": profile}, None)[0] == 401
        assert daemon.status()["models"]["assistant"]["reference_version"] == "v2"
    finally:
        daemon.stop()

    again = start_daemon(config, token="s3cret")
    try:
        model = again.evaluated()["models"]["assistant"]
        assert model["reference_version"] == "v2" and not model["drifting"]
    finally:
        again.stop()


def test_a_daemon_without_a_token_takes_no_reference(daemon):
    code, answer = put(daemon, "assistant", {"version": "v2", "profile": shouting_profile()})
    assert code == 403 and "set server.token" in answer["error"]
    assert daemon.status()["models"]["assistant"]["reference_version"] == "config"
