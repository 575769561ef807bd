"""Review: label what the monitor flagged or captured, one sample at a time.

The daemon's review queue (GET /v1/review) orders the unlabelled events so that an annotator's
time goes furthest (safety flags first, then drift; one per distinct input, spread over the
feature space). Each sample shows its input (text, the image, or an audio player) and the
model's answer, which the annotator accepts, corrects or rejects; Skip leaves it for later.
Labels go to POST /v1/feedback under the annotator's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from omnitune.dashboard import views

config = views.settings()
st.title("Review")
daemon = config.sources.daemon


def progress(status: dict[str, Any]) -> None:
    """Per model: labels stored by people and by teachers, and what still waits."""
    columns = st.columns(max(1, len(status["models"])))
    for column, (name, model) in zip(columns, status["models"].items(), strict=False):
        labels = model.get("labels", {})
        column.metric(
            f"{name}: labelled",
            f"{labels.get('human', 0):,.0f}",
            help=f"{labels.get('teacher', 0):,.0f} more by teacher models",
        )
        column.caption(f"{model.get('review_queue', 0):,} waiting in the queue")


def show_input(event: dict[str, Any]) -> None:
    raw = event.get("input")
    text = raw if isinstance(raw, str) else (raw or {}).get("text")
    if text:
        st.markdown("**Input**")
        st.text(text)
    for key in ("image_path", "audio_path"):
        path = (raw or {}).get(key) if isinstance(raw, dict) else None
        if not path:
            continue
        if not Path(path).is_file():
            st.warning(f"{Path(path).name}: the file is not on this machine ({path})")
        elif key == "image_path":
            st.image(path, width=224)  # a 32-pixel digit, drawn large enough to judge
        else:
            st.audio(path)


def label(event: dict[str, Any], annotator: str, **fields: Any) -> None:
    answer = views.shown(
        daemon.feedback, request_id=event["request_id"], annotator=annotator, **fields
    )
    if answer is not None:
        st.session_state["review_done"] = st.session_state.get("review_done", 0) + 1
        st.rerun()


def review_one(model: str, annotator: str) -> None:
    skipped: list[str] = st.session_state.setdefault("review_skipped", [])
    queue = views.shown(daemon.review, model, 1 + len(skipped))
    if queue is None:
        return
    todo = [e for e in queue["events"] if e["request_id"] not in skipped]
    if not todo:
        st.success(f"Nothing left to review for {model}.")
        return
    event = todo[0]
    reason = {"safety": "flagged: " + ", ".join(event["flags"]), "drift": "drifted input"}
    st.subheader(f"{event['request_id']} ({reason.get(event['reason'], event['reason'])})")
    if event.get("duplicates", 1) > 1:
        st.caption(f"{event['duplicates']} queued events share this input; this label is for one")
    show_input(event)
    output = event.get("output") or ""
    st.markdown("**The model answered**")
    st.text(output or "(nothing)")
    target = st.text_area("What it should have answered", output, key=f"target-{event['id']}")
    accept, reject, skip = st.columns(3)
    if accept.button("Accept", type="primary", help="right as written, or as you corrected it"):
        if target.strip() == output.strip():
            label(event, annotator, score=True)
        else:
            label(event, annotator, score=False, correction=target.strip())
    if reject.button("Reject", help="wrong, and no correction to give"):
        label(event, annotator, score=False)
    if skip.button("Skip", help="leave it for later (this session)"):
        skipped.append(event["request_id"])
        st.rerun()


if daemon is None:
    st.info("The review queue is kept by the monitor daemon: give --daemon URL to review.")
else:
    status = views.shown(daemon.status, fresh=True)
    if status is not None and status["models"]:
        progress(status)
        model = st.selectbox("Model", list(status["models"]))
        annotator = st.text_input("Annotator", st.session_state.get("annotator", "reviewer"))
        st.session_state["annotator"] = annotator
        st.caption(f"Labelled in this session: {st.session_state.get('review_done', 0)}")
        review_one(model, annotator)
