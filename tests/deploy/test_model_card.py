"""MODEL_CARD.md: the sections an app store asks for, both licences, and the measured figures exactly as the
raw start-up results in docs/bench say (the card and the deploy guides cannot drift from them)."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.conftest import DEPLOY, ROOT
from tests.tools.dockerfile import Dockerfile

CARD = ROOT / "MODEL_CARD.md"
RESULTS = ROOT / "docs" / "bench" / "cpu-2core-startup.json"
SECTIONS = ("Model details", "Intended use", "How it works", "Inputs and outputs", "Performance",
            "Limitations and risks", "Licences")
GUIDES = ("cloud-run", "fargate", "openshift-serverless", "app-store")


def _medians() -> dict[str, dict[str, float]]:
    return json.loads(RESULTS.read_text())["median"]


def _row_figures(m: dict[str, float]) -> list[str]:
    return [f"{m['ready_s']:.1f} s", f"{m['first_answer_s']:.1f} s", f"{m['warm_ms']:,.0f} ms",
            f"{m['rss_mb'] / 1024:.2f} GiB", f"{m['peak_rss_mb'] / 1024:.2f} GiB"]


def _row(text: str, model: str) -> str:
    """The measurements table's row for ``model`` (the one with memory in GiB)."""
    rows = [row for row in re.findall(rf"^\| {re.escape(model)} [|(].*$", text, re.M) if "GiB" in row]
    assert len(rows) == 1, f"one measured row for {model} expected, found {rows}"
    return rows[0]


def test_card_has_every_section():
    headings = re.findall(r"^#+ (.+)$", CARD.read_text(), re.M)
    for section in SECTIONS:
        assert section in headings, section


def test_card_names_both_licences_as_the_image_labels_do():
    text = CARD.read_text()
    assert "Apache-2.0" in text and "GPL-3.0" in text
    args = dict(i.value.split("=", 1) for i in Dockerfile.read(ROOT / "Dockerfile").stage("predictor").all("ARG")
                if "=" in i.value)
    assert f"`{json.loads(args['LICENSES'])}`" in text


def test_card_cites_the_official_accuracy_source():
    text = CARD.read_text()
    assert "arXiv:2207.02696" in text
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    for entry in manifest["weights"]:  # the card's AP val column is the manifest's coco_ap
        assert re.search(rf"^\| {re.escape(entry['name'])} \| {entry['input_size']} \| [^|]+ \| {entry['coco_ap']} \|",
                         text, re.M), entry["name"]


@pytest.mark.parametrize("model", ["yolov7-tiny", "yolov7"])
def test_measured_figures_are_the_benchmarks(model):
    figures = _row_figures(_medians()[model])
    for text in (CARD.read_text(), (DEPLOY / "README.md").read_text()):
        row = _row(text, model)
        assert [f for f in figures if f not in row] == [], row


@pytest.mark.parametrize("guide", GUIDES)
def test_each_guide_states_cold_start_and_memory(guide):
    text = (DEPLOY / guide / "README.md").read_text()
    medians = _medians()
    for model in ("yolov7", "yolov7-tiny"):
        assert f"{medians[model]['first_answer_s']:.1f} s" in text
        assert f"{medians[model]['rss_mb'] / 1024:.2f} GiB" in text
