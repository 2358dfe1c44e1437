"""Health alerts to a webhook: ``Crew(on_alert=...)`` posting each change of a run's health.

What it shows: a crew with a `HealthPolicy` (a task counts as stalled after 1 s without
progress) and an ``on_alert`` hook that sends each `RunHealthChanged` to a webhook with httpx,
as JSON: a one-line ``text`` (what Slack-style webhooks show) and the whole event. The
``draft`` task's model takes 1.5 s to answer, so the run stalls 1 s into it and recovers half
a second later: two alerts. The hook is a plain function, so crewflow runs it in a worker
thread; a hook that fails or hangs is logged and never breaks the run.

The webhook is ``CREWFLOW_ALERT_URL`` when set; without it, the script starts its own
receiver on 127.0.0.1, which prints what it gets, so it runs offline:

    python examples/alerts_webhook.py
    CREWFLOW_ALERT_URL=https://hooks.example.com/... python examples/alerts_webhook.py
    crewflow run examples/alerts_webhook.py

``python`` runs it on ``crewflow.testing.run_virtual`` (waits take no real time: it ends at
once); ``crewflow run`` takes its 2 s for real, and its live view shows the stall too.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import httpx

from crewflow import Agent, Crew, HealthPolicy, Task
from crewflow.llm import OfflineLLM
from crewflow.testing import run_virtual

if TYPE_CHECKING:
    from crewflow.events import RunHealthChanged


class _Receiver(BaseHTTPRequestHandler):
    """A stand-in webhook: prints the ``text`` of each alert posted to it."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        print(f"webhook got: {body['text']}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the printout above is enough."""


_lock = threading.Lock()
_url: str | None = os.environ.get("CREWFLOW_ALERT_URL")


def webhook_url() -> str:
    """``CREWFLOW_ALERT_URL``, else the address of a receiver started here on first use."""
    global _url
    with _lock:
        if _url is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            _url = f"http://127.0.0.1:{server.server_port}/alerts"
        return _url


def summary(change: RunHealthChanged) -> str:
    """One line for a chat channel: the new status and what began or ended."""
    parts = [f"[{change.health.status}] run {change.run_id[:8]}"]
    parts += [f"+ {issue.detail}" for issue in change.raised]
    parts += [f"- {issue.kind} {issue.subject}: over" for issue in change.cleared]
    return "; ".join(parts)


def post_alert(change: RunHealthChanged) -> None:
    """The crew's ``on_alert`` hook: post the change to the webhook (in a worker thread)."""
    payload = {"text": summary(change), "event": change.model_dump(mode="json")}
    reply = httpx.post(webhook_url(), json=payload, timeout=5.0)
    reply.raise_for_status()  # a failure is logged by crewflow, and the run goes on


researcher = Agent(role="Researcher", goal="Find facts", llm=OfflineLLM(latency=0.2))
writer = Agent(role="Writer", goal="Write clearly", llm=OfflineLLM(latency=1.5))
facts = Task("Collect facts about {topic}", agent=researcher, name="facts")
draft = Task("Write a short post about {topic}", agent=writer, name="draft", context=[facts])

crew = Crew(
    tasks=[facts, draft],
    name="alerts",
    health=HealthPolicy(stall_after=1.0),
    on_alert=post_alert,
    default_inputs={"topic": "tidal power"},
)


def main() -> None:
    result = run_virtual(crew.kickoff)
    print(f"{result.output.task}: {result.output.text[:60]}")


if __name__ == "__main__":
    main()
