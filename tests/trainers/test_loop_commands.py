"""The closed loop through the CLI on the tiny chat model: `omnitune loop retune` on labelled
captures with replay, `loop gate` (promote, and the two rejections the issue names),
`loop promote` / `rollback` with a real daemon taking each version's reference, and the
refusals that must leave everything as it was.

The captured task is the one a served model meets after a change upstream: prompts now come
as `digits: seven three` and the labellers want `73`. A champion trained on `seven three` ->
`7 3` gets few of them right; a challenger retuned on 96 labelled captures with replay learns
them and keeps the original task."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
import yaml

from omnitune.modalities.text.sample_data import WORDS
from tests.conftest import run_cli
from tests.monitor.conftest import answering_upstream, start_daemon, start_proxy

REQUIRED = "loop.min_labels=10"


def captured_chat(rng: random.Random) -> dict:
    digits = [rng.randrange(10) for _ in range(rng.randint(1, 3))]
    return {
        "messages": [
            {"role": "user", "content": "digits: " + " ".join(WORDS[d] for d in digits)},
            {"role": "assistant", "content": "".join(map(str, digits))},
        ],
        "request_id": f"req-{rng.randrange(10**9)}",
        "annotator": "alice",
        "label_source": "human",
        "reason": "drift",
    }


def write_export(folder: Path, rows: dict[str, list[dict]]) -> Path:
    """An `omnitune monitor export` folder: sft/train.jsonl and sft/test.jsonl."""
    (folder / "sft").mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        (folder / "sft" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return folder


@pytest.fixture(scope="module")
def loop_world(tmp_path_factory, tiny_model, text_data) -> dict[str, Path]:
    """A champion run, labelled captures, the same captures with shuffled answers."""
    root = tmp_path_factory.mktemp("loop")
    rng = random.Random(5)
    train = [captured_chat(rng) for _ in range(96)]
    test = [captured_chat(rng) for _ in range(32)]
    answers = [r["messages"][1]["content"] for r in train]
    random.Random(1).shuffle(answers)
    shuffled = [
        {**r, "messages": [r["messages"][0], {"role": "assistant", "content": a}]}
        for r, a in zip(train, answers, strict=True)
    ]
    config = {
        "model": {"name_or_path": str(tiny_model("text")), "modality": "text"},
        "data": {"train": str(text_data["train"]), "eval": str(text_data["eval"])},
        "peft": {"method": "lora", "r": 16, "alpha": 32},
        "train": {
            "max_steps": 150,
            "batch_size": 32,
            "lr": 1e-2,
            "lr_schedule": "cosine",
            "warmup_steps": 5,
            "eval_steps": 50,
            "save_steps": 50,
            "num_threads": 1,
        },
        "eval": {"metrics": ["exact_match"], "generation": {"max_new_tokens": 8}},
        "output_dir": str(root / "champion"),
    }
    (root / "champion.yaml").write_text(yaml.safe_dump(config))
    trained = run_cli("train", str(root / "champion.yaml"))
    assert trained.returncode == 0, trained.stderr
    return {
        "root": root,
        "champion": root / "champion",
        "labels": write_export(root / "labels", {"train": train, "test": test}),
        "shuffled": write_export(root / "shuffled", {"train": shuffled, "test": test}),
    }


def retune(world: dict[str, Path], name: str, labels: str, *overrides: str) -> Path:
    out = world["root"] / name
    done = run_cli(
        "loop", "retune", str(world["champion"]), "--labels", str(world[labels]),
        "--out", str(out), REQUIRED, "train.max_steps=100", *overrides,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{out}: 96 labelled rows" in done.stdout
    return out


def gate(world: dict[str, Path], challenger: Path) -> tuple[int, dict, str]:
    done = run_cli(
        "loop", "gate", str(world["champion"]), str(challenger), "gate.metric=exact_match"
    )
    assert done.returncode in (0, 3), done.stderr
    report = json.loads((challenger / "gate" / "gate.json").read_text())
    return done.returncode, report, done.stdout


@pytest.fixture(scope="module")
def challenger(loop_world) -> Path:
    """The champion retuned on the labelled captures with replay (not yet gated)."""
    return retune(loop_world, "challenger", "labels")


def test_the_gate_promotes_a_retuned_challenger_and_rejects_forgetting_and_shuffled_labels(
    loop_world, challenger
):
    champion = loop_world["champion"]
    record = json.loads((challenger / "loop" / "retune.json").read_text())
    assert record["labelled_rows"] == 96 and record["replayed_rows"] == 96  # replay_ratio 0.5
    assert record["held_out"].endswith("labels/sft/test.jsonl")
    provenance = [
        json.loads(line)
        for line in (challenger / "loop" / "provenance.jsonl").read_text().splitlines()
    ]
    assert len(provenance) == 192
    assert sum(p["source"] == "labels" for p in provenance) == 96
    assert all(p["request_id"].startswith("req-") for p in provenance if p["source"] == "labels")
    config = yaml.safe_load((challenger / "config.yaml").read_text())
    assert config["peft"]["init_from"] == str((champion / "adapter").resolve())
    first_eval = json.loads((challenger / "metrics.jsonl").read_text().splitlines()[0])
    champion_eval = json.loads((champion / "summary.json").read_text())["checkpoint"]["metrics"]
    # Continued from the champion's adapter: step 0 scores what the champion scored.
    assert first_eval["loss"] == pytest.approx(champion_eval["loss"], abs=1e-4)

    code, report, shown = gate(loop_world, challenger)
    assert code == 0 and report["decision"] == "promote", shown
    captures = report["slices"]["captures"]["metrics"]["exact_match"]
    original = report["slices"]["original"]["metrics"]["exact_match"]
    assert captures["low"] > 0 and captures["challenger"] > captures["champion"] + 0.1
    assert original["gain"] >= -0.05
    # The champion's scores on its own eval set are what its training run logged.
    assert original["champion"] == pytest.approx(champion_eval["exact_match"])
    assert "captures  exact_match *" in shown and "promote: report in" in shown
    assert "| captures | exact_match * |" in (challenger / "gate" / "gate.md").read_text()

    forgetful = retune(loop_world, "no-replay", "labels", "loop.replay_ratio=0", "train.lr=0.02")
    code, report, shown = gate(loop_world, forgetful)
    assert code == 3 and report["decision"] == "reject", shown
    assert report["reasons"][0].startswith("original: exact_match got worse by")
    forgot = report["slices"]["original"]["metrics"]["exact_match"]
    assert forgot["gain"] < original["gain"] - 0.2  # replay kept what no replay forgot

    shuffled = retune(loop_world, "shuffled", "shuffled")
    code, report, shown = gate(loop_world, shuffled)
    assert code == 3 and report["reasons"][0].startswith("captures: exact_match gain"), shown
    assert "does not clear gate.min_gain" in shown


def test_canary_promote_and_rollback_move_the_proxy_and_the_daemons_reference(
    loop_world, challenger, tmp_path
):
    """v1 serves; the challenger goes to a quarter of the calls through a real proxy, is
    withdrawn, goes again, is promoted in full (the daemon measures drift against its
    training mix from then on), and is rolled back, all without restarting anything."""
    champion, root = loop_world["champion"], loop_world["root"]
    for rejected, labels, extra in (
        ("shuffled", "shuffled", ()),
        ("no-replay", "labels", ("loop.replay_ratio=0", "train.lr=0.02")),
    ):
        if not (root / rejected / "gate").is_dir():  # when this test runs alone
            gate(loop_world, retune(loop_world, rejected, labels, *extra))
    code, _, shown = gate(loop_world, challenger)
    assert code == 0, shown
    champion_server, stop_champion = answering_upstream("7 3 1")
    challenger_server, stop_challenger = answering_upstream("731")
    monitor = {
        "server": {"host": "127.0.0.1", "port": 0, "token": "s3cret"},
        "store": {"path": str(tmp_path / "store" / "events.sqlite")},
        "models": {"digits": {"modality": "text", "reference": str(champion)}},
        "window": {"size": 200, "min_events": 50},
        "proxy": {"upstream": champion_server, "default_model": "digits"},
    }
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(monitor))
    daemon = start_daemon(path, token="s3cret")
    monitor["proxy"]["daemon_url"] = daemon.url
    path.write_text(yaml.safe_dump(monitor))
    proxy = start_proxy(path)
    registry = str(tmp_path / "registry")
    reach = ["--registry", registry, "--daemon", daemon.url, "--proxy", proxy.url]
    reach += ["--token", "s3cret"]
    as_canary = ["--canary", "0.25", "--upstream", challenger_server]

    def promote(run: Path, *extra: str):
        return run_cli("loop", "promote", str(run), "--model", "digits", *reach, *extra)

    try:
        first = promote(champion)
        assert first.returncode == 0, first.stderr
        assert "digits v1 serves" in first.stdout and "first version" in first.stdout
        refused = promote(root / "shuffled", *as_canary)
        assert refused.returncode == 2 and "the gate rejected it" in refused.stderr
        assert proxy.request("GET", "/omnitune/canary")[1] == {"canary": None}

        canary = promote(challenger, *as_canary)
        assert canary.returncode == 0, canary.stderr
        assert "digits v2 is the canary" in canary.stdout and "routes 25% of calls" in canary.stdout
        shown = proxy.request("GET", "/omnitune/canary")[1]["canary"]
        assert shown["adapter"] == "v2" and shown["share"] == 0.25
        assert daemon.status()["models"]["digits"]["reference_version"] == "v1"
        withdrawn = run_cli("loop", "rollback", "digits", *reach)
        assert "canary v2 withdrawn; v1 serves every call" in withdrawn.stdout, withdrawn.stderr
        assert proxy.request("GET", "/omnitune/canary")[1] == {"canary": None}

        assert promote(challenger, *as_canary).returncode == 0  # again: v3
        full = promote(challenger)
        assert full.returncode == 0, full.stderr
        assert "digits v3 serves" in full.stdout and "gate: promote" in full.stdout
        assert proxy.request("GET", "/omnitune/canary")[1] == {"canary": None}
        status = daemon.status()["models"]["digits"]
        assert status["reference_version"] == "v3"
        assert status["reference"].endswith("digits/v3.json")
        version = tmp_path / "registry" / "digits" / "v3"
        assert (version / "adapter" / "adapter_config.json").is_file()
        assert json.loads((version / "gate.json").read_text())["decision"] == "promote"
        # v3's reference is the profile of the challenger's training mix, captures included.
        assert json.loads((version / "reference.json").read_text())["source"].endswith(
            "loop/train.jsonl"
        )
        # A gate against v1 says nothing about replacing v3.
        stale = promote(root / "no-replay")
        assert stale.returncode == 2 and "digits serves v3 from" in stale.stderr
        assert sorted(p.name for p in (tmp_path / "registry" / "digits").iterdir()) == [
            "v1",
            "v2",
            "v3",
            "versions.json",
        ]

        back = run_cli("loop", "rollback", "digits", *reach)
        assert back.returncode == 0 and "rolled back from v3 to v1" in back.stdout, back.stderr
        assert daemon.status()["models"]["digits"]["reference_version"] == "v1"
        listed = run_cli("loop", "versions", "digits", "--registry", registry)
        lines = listed.stdout.splitlines()
        assert lines[0].startswith("* v1") and "first version" in lines[0]
        assert lines[1].startswith("  v2") and lines[2].startswith("  v3")
        again = run_cli("loop", "rollback", "digits", *reach)
        assert again.returncode == 2 and "first version" in again.stderr
    finally:
        proxy.stop()
        daemon.stop()
        stop_champion()
        stop_challenger()
    restarted = start_daemon(path, token="s3cret")
    try:  # the acknowledged reference outlives the process
        assert restarted.status()["models"]["digits"]["reference_version"] == "v1"
    finally:
        restarted.stop()


def test_the_loop_refuses_bad_input_and_changes_nothing(loop_world, tmp_path):
    champion, root = loop_world["champion"], loop_world["root"]
    no_held_out = tmp_path / "labels"
    shutil.copytree(loop_world["labels"], no_held_out)
    (no_held_out / "sft" / "test.jsonl").unlink()
    done = run_cli("loop", "retune", str(champion), "--labels", str(no_held_out), REQUIRED,
                   "--out", str(tmp_path / "never"))  # fmt: skip
    assert done.returncode == 2 and "has no held-out split (sft/test.jsonl)" in done.stderr
    assert not (tmp_path / "never").exists()

    too_few = run_cli("loop", "retune", str(champion), "--labels", str(loop_world["labels"]),
                      "--out", str(tmp_path / "never"), "loop.min_labels=200")  # fmt: skip
    assert too_few.returncode == 2
    assert "has 96 labelled rows; loop.min_labels is 200" in too_few.stderr
    assert not (tmp_path / "never").exists()

    other_base = tmp_path / "other-base"
    shutil.copytree(champion, other_base)
    model_copy = tmp_path / "tiny-text-copy"
    config = yaml.safe_load((other_base / "config.yaml").read_text())
    shutil.copytree(config["model"]["name_or_path"], model_copy)
    config["model"]["name_or_path"] = str(model_copy)
    (other_base / "config.yaml").write_text(yaml.safe_dump(config))
    done = run_cli("loop", "gate", str(champion), str(other_base), "--captures",
                   str(loop_world["labels"] / "sft" / "test.jsonl"))  # fmt: skip
    assert done.returncode == 2 and "trained on another base model" in done.stderr
    assert not (other_base / "gate").exists()

    other_modality = tmp_path / "other-modality"
    shutil.copytree(champion, other_modality)
    config["model"] = {"name_or_path": config["model"]["name_or_path"], "modality": "speech"}
    config["eval"]["metrics"] = []
    (other_modality / "config.yaml").write_text(yaml.safe_dump(config))
    done = run_cli("loop", "gate", str(champion), str(other_modality), "--captures", "x.jsonl")
    assert done.returncode == 2 and "is a speech run" in done.stderr, done.stderr

    not_gated = run_cli("loop", "gate", str(champion), str(champion))
    assert not_gated.returncode == 2 and "--captures" in not_gated.stderr
    assert not (champion / "gate").exists()
    bad = run_cli("loop", "gate", str(champion), str(root / "challenger"), "gate.min_gain=-1")
    assert bad.returncode == 2 and "gate.min_gain" in bad.stderr


def chat_events(prompts: list[str], answer, start: int, start_ts: float) -> list[dict]:
    return [
        {
            "model": "digits",
            "adapter": "v1",
            "request_id": f"call-{start + i}",
            "ts": start_ts + i * 0.01,
            "latency_s": 0.05,
            "input": prompt,
            "output": answer(prompt),
        }
        for i, prompt in enumerate(prompts)
    ]


def test_alertmanager_drift_alert_runs_retune_gate_and_canary_end_to_end(loop_world, tmp_path):
    """Real Prometheus scrapes the daemon and evaluates the shipped OmnituneInputDrift rule,
    real Alertmanager routes it with the shipped config to `omnitune loop watch`, which
    exports the labels people gave, retunes, gates and routes a canary through the proxy."""
    from tests.monitor.conftest import start_alertmanager, start_listening, start_prometheus

    champion = loop_world["champion"]
    champion_server, stop_champion = answering_upstream("7 3 1")
    challenger_server, stop_challenger = answering_upstream("731")
    monitor = {
        "server": {"host": "127.0.0.1", "port": 0, "token": "s3cret", "metrics_token": False},
        "store": {"path": str(tmp_path / "store" / "events.sqlite")},
        "models": {"digits": {"modality": "text", "reference": str(champion)}},
        "window": {"size": 200, "min_events": 50},
        "drift": {"interval_s": 0.5},
        "proxy": {"upstream": champion_server, "default_model": "digits"},
    }
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(monitor))
    running = []
    try:
        daemon = start_daemon(path, token="s3cret")
        running.append(daemon.stop)
        monitor["proxy"]["daemon_url"] = daemon.url
        path.write_text(yaml.safe_dump(monitor))
        proxy = start_proxy(path)
        running.append(proxy.stop)
        registry = tmp_path / "registry"
        first = run_cli("loop", "promote", str(champion), "--model", "digits", "--registry",
                        str(registry), OMNITUNE_TOKEN="s3cret")  # fmt: skip
        assert first.returncode == 0, first.stderr
        settings = {
            "loop": {"min_labels": 20},
            "gate": {"metric": "exact_match"},
            "watch": {
                "port": 0,
                "workdir": str(tmp_path / "rounds"),
                "poll_s": 1,
                "models": {
                    "digits": {
                        "daemon": daemon.url,
                        "proxy": proxy.url,
                        "registry": str(registry),
                        "canary_share": 0.2,
                        "canary_upstream": challenger_server,
                        "overrides": ["train.max_steps=100"],
                    }
                },
            },
        }
        (tmp_path / "watch.yaml").write_text(yaml.safe_dump(settings))
        watch = start_listening(["loop", "watch", "--settings", str(tmp_path / "watch.yaml")],
                                "/healthz", OMNITUNE_TOKEN="s3cret")  # fmt: skip
        running.append(watch.stop)
        alertmanager, stop_alertmanager = start_alertmanager(tmp_path, watch.url + "/alerts")
        running.append(stop_alertmanager)
        prometheus = start_prometheus(daemon.url, tmp_path, alertmanager=alertmanager,
                                      alerts_fire_at_once=True)  # fmt: skip
        running.append(prometheus.stop)

        # Traffic as in training, then the upstream change: "digits: ..." prompts.
        rng = random.Random(11)
        usual = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(150)]
        changed = [captured_chat(rng)["messages"][0]["content"] for _ in range(200)]
        spaced = lambda prompt: " ".join(str(WORDS.index(w)) for w in prompt.split() if w in WORDS)  # noqa: E731
        events = chat_events(usual, spaced, 0, 1.8e9) + chat_events(changed, spaced, 150, 1.8e9 + 2)
        for start in range(0, len(events), 25):
            assert daemon.post(events[start : start + 25])[0] == 200
        # People label the changed calls: the answer they wanted.
        for index, prompt in enumerate(changed):
            label = {"request_id": f"call-{150 + index}", "score": 0.0}
            label["correction"] = spaced(prompt).replace(" ", "")
            code, body = daemon.request("POST", "/v1/feedback", json.dumps(label))
            assert code == 200, body

        fired = prometheus.wait_for('ALERTS{alertname="OmnituneInputDrift",alertstate="firing"}')
        assert fired[0]["metric"]["model"] == "digits"
        deadline = time.monotonic() + 240
        rounds: list = []
        while time.monotonic() < deadline and not rounds:
            rounds = watch.request("GET", "/v1/rounds")[1]["rounds"]
            time.sleep(1)
        assert rounds, "no loop round ended:\n" + "".join(watch.output)
        (first_round,) = rounds[:1]
        assert first_round["outcome"] == "canary", first_round
        assert first_round["gate"] == "promote" and first_round["labels"] >= 20
        shown = proxy.request("GET", "/omnitune/canary")[1]["canary"]
        assert shown["adapter"] == "v2" and shown["share"] == 0.2
        assert shown["upstream"] == challenger_server
        metrics = watch.request("GET", "/metrics")[1]
        assert 'omnitune_loop_runs_total{model="digits",outcome="canary"} 1.0' in metrics
        assert (
            'omnitune_loop_gate_gain{metric="exact_match",model="digits",slice="captures"}'
            in metrics
        )
        state = json.loads((registry / "digits" / "versions.json").read_text())
        assert state["serving"] == "v1" and state["canary"] == "v2"  # a person promotes in full
    finally:
        for stop in reversed(running):
            stop()
        stop_champion()
        stop_challenger()
