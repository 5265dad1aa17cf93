"""The status page as a person sees it: a real headless Chromium loads `/` from the running server.

Jobs in four states (watching with progress, firing with a Keboola job running, completed, failed); the
test reads the DOM Chromium built (--dump-dom) and takes one screenshot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
from test_web import StoreControl, _check, populate, serve_in_thread

from teckochecker.plugin_api import Observation, TargetState
from teckochecker.state.store import JobPlan, StateStore

BROWSER_TIMEOUT = 60  # seconds; a cold Chromium start on a slow CI machine takes a few
HOSTILE = "<script>alert(1)</script>\"&'"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("Chromium is required in CI (apt-get install -y chromium)")
    pytest.skip("no Chromium on this machine (apt-get install -y chromium)")


def run_browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False)


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text_parts: list[str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and (cls is None or cls in child.classes):
                found.append(child)
            found += child.find_all(tag, cls)
        return found

    def find(self, tag: str | None = None, cls: str | None = None) -> Node:
        found = self.find_all(tag, cls)
        assert found, f"no <{tag} class={cls}> in <{self.tag} {self.attrs}>"
        return found[0]


class DomParser(HTMLParser):
    """Just enough of a DOM: Chromium's dump is well-formed, so a stack of open elements suffices."""

    VOID: ClassVar[set[str]] = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "wbr", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.text_parts.append(data)


def parse(html: str) -> Node:
    parser = DomParser()
    parser.feed(html)
    return parser.root


@pytest.fixture
def page_url(tmp_path: Path) -> Iterator[str]:
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    # A job whose name is fine but whose vendor message is hostile: it must show as text, never run.
    populate(store, JobPlan("hostile", "f5", ["batch_h"]))
    _check(store, "hostile", Observation("batch_h", TargetState.RUNNING, "in_progress", {}, HOSTILE))
    try:
        with serve_in_thread(StoreControl(store)) as base:
            yield base + "/"
    finally:
        store.close()


def test_status_page_in_a_real_browser(page_url: str, tmp_path: Path) -> None:
    out = run_browser(tmp_path, "--dump-dom", page_url)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = parse(out.stdout)

    jobs = {s.attrs["data-job"]: s for s in dom.find_all("section", "job")}
    assert {name: s.attrs["data-state"] for name, s in jobs.items()} == {
        "done": "completed",
        "firing": "firing",
        "hostile": "watching",
        "late": "failed",
        "watching": "watching",
    }

    # Watching: each batch with its state and a progress bar labelled completed/total (failed).
    watching = jobs["watching"]
    assert watching.find("h2", "job-name").text() == "watching"
    targets = {row.attrs["data-target"]: row for row in watching.find_all("tr", "target")}
    assert {t: row.attrs["data-state"] for t, row in targets.items()} == {"batch_a": "running", "batch_b": "pending"}
    assert targets["batch_a"].find("span", "progress-label").text() == "7/10 (1 failed)"
    bar = targets["batch_a"].find("span", "bar")
    assert bar.attrs["role"] == "progressbar"
    assert bar.attrs["aria-valuenow"] == "7" and bar.attrs["aria-valuemax"] == "10"
    assert targets["batch_a"].find("td", "vendor-status").text() == "in_progress"
    assert targets["batch_b"].find("span", "progress-label").text() == "-"
    assert watching.find("dd", "targets-done").text() == "0/2"
    assert watching.find("dd", "next-check").text().startswith(("in ", "due now"))

    # Firing: the Keboola job's id (linked), state and vendor status.
    (run,) = jobs["firing"].find_all("tr", "run")
    assert run.attrs["data-state"] == "running" and run.attrs["data-action-type"] == "keboola_job"
    link = run.find("a", "external-id")
    assert link.text() == "4242" and link.attrs["href"] == "https://queue.keboola.com/jobs/4242"
    assert run.find("td", "vendor-status").text() == "processing"
    firing_targets = {r.attrs["data-target"]: r for r in jobs["firing"].find_all("tr", "target")}
    assert firing_targets["batch_d"].find("span", "progress-label").text() == "2/3 (1 failed)"
    assert firing_targets["batch_d"].find("td", "message").text() == "1 of 3 requests failed"

    # Completed and failed.
    done_run = jobs["done"].find("tr", "run")
    assert done_run.attrs["data-state"] == "succeeded" and done_run.find(cls="external-id").text() == "777"
    assert jobs["done"].find("dd", "next-check").text() == "-"
    assert jobs["late"].find("dd", "last-error").text() == "deadline passed before every batch finished"

    # Recent events, newest first.
    kinds = [li.attrs["data-kind"] for li in jobs["late"].find_all("li", "event")]
    assert kinds[0] == "deadline_passed" and kinds[-1] == "registered"
    assert any("trigger fired" in li.text() for li in jobs["firing"].find_all("li", "event"))

    # Hostile vendor text is shown as text: no element was created from it.
    hostile = jobs["hostile"]
    assert hostile.find("tr", "target").find("td", "message").text() == HOSTILE
    assert not dom.find_all("script")

    # The page reloads itself and needs nothing from outside.
    assert any(m.attrs.get("http-equiv") == "refresh" and m.attrs.get("content") == "15" for m in dom.find_all("meta"))
    assert not [n for n in dom.find_all() if n.tag in ("link", "img", "iframe") or "src" in n.attrs]


def test_status_page_screenshot(page_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "status.png"
    out = run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars", page_url)
    assert out.returncode == 0, out.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
