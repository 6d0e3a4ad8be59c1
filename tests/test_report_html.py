"""The HTML report: the text render_html writes (escaping, every key shown), the wire-up
(FlopMode.to_html, _repr_html_, --html), and the page itself in headless Chromium."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from dispatchcount import FlopMode
from dispatchcount.cli import main as cli_main
from dispatchcount.report_html import notebook_html, render_html

EVIL = "</script><img src=x onerror=\"window.pwned=1\">&amp;'"


def hand_data(**extra):
    """A report dict written by hand: forward 1.5G + backward 4.5G = 6G; one stage, two blocks."""
    modules = {
        "": {"params": 1000, "calls": 1, "forward": 1_500_000_000, "backward": 4_500_000_000},
        "stage": {"params": 900, "calls": 1, "forward": 1_200_000_000, "backward": 3_600_000_000},
        "stage.0": {"params": 450, "calls": 1, "forward": 900_000_000, "backward": 2_700_000_000},
        "stage.1": {"params": 450, "calls": 1, "forward": 300_000_000, "backward": 900_000_000},
        "head": {"params": 100, "calls": 1, "forward": 300_000_000, "backward": 900_000_000},
    }
    data = {
        "convention": "flop", "total": 6_000_000_000, "forward": 1_500_000_000,
        "backward": 4_500_000_000, "recompute": 0,
        "by_module": {name: m["forward"] + m["backward"] for name, m in modules.items()},
        "modules": modules,
        "by_operator": {"aten.mm": 4_500_000_000, "aten.add": 1_500_000_000},
        "operator_calls": {"aten.mm": 12, "aten.add": 7, "aten.view": 30},
        "by_module_and_operator": {"stage.0": {"aten.mm": 3_000_000_000, "aten.add": 600_000_000}},
        "beyond_fvcore": {}, "unsupported_ops": {}, "formula_errors": {}, "uncalled_modules": [],
    }
    data.update(extra)
    return data


def embedded_json(page: str) -> dict:
    match = re.search(r'<script type="application/json" id="dc-data">(.*?)</script>', page, re.S)
    assert match, "no embedded data"
    assert "<" not in match.group(1) and ">" not in match.group(1)
    return json.loads(match.group(1))


def test_header_totals_split_and_operator_rows():
    page = render_html(hand_data())
    assert "convention: <b>flop</b>" in page and "a multiply-add is 2 FLOPs" in page
    assert '<dd title="6,000,000,000 FLOPs">6G' in page
    assert "1.5G <small>FLOPs</small> <small>(25.0%)</small>" in page  # 1.5 / 6
    assert "4.5G <small>FLOPs</small> <small>(75.0%)</small>" in page
    assert 'class="dc-fwd" style="width:25.000%"' in page and 'class="dc-bwd" style="width:75.000%"' in page
    rows = re.findall(r"<tr( class=\"dc-zero\")?><td>(aten\.\w+)</td><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td>"
                      r"<td[^>]*>([^<]*)</td>", page)
    assert rows == [("", "aten.mm", "12", "4.5G", "75.0%"), ("", "aten.add", "7", "1.5G", "25.0%"),
                    (' class="dc-zero"', "aten.view", "30", "0", "0.0%")]
    assert "show the 1 operators that cost nothing" in page
    assert "None: every operator that ran had a rule." in page
    assert 'id="dc-beyond"' not in page  # convention "flop": nothing is beyond fvcore
    assert 'id="dc-device"' not in page and 'id="dc-sections"' not in page
    # Only FLOPs to size by, no bound colouring, without those keys.
    assert re.findall(r'name="dc-metric" value="(\w+)"', page) == ["flops"]
    assert 'name="dc-colour"' not in page


def test_embedded_data_round_trips_in_module_order():
    data = hand_data()
    data["modules"] = {"": data["modules"][""], "10": {"forward": 1}, "2": {"forward": 1}}
    payload = embedded_json(render_html(data))
    assert {**payload["data"], "modules": payload["modules"]} == data
    assert payload["order"] == ["", "10", "2"]  # as given; a JS object would sort "2" before "10"


def test_optional_keys_are_shown_when_present():
    data = hand_data(
        convention="fvcore", metrics=["flops", "bytes", "seconds"],
        beyond_fvcore={"aten._scaled_dot_product_flash_attention": 2_000_000},
        device={"name": "H100 SXM", "peak_flops": {"bfloat16": 989e12}, "memory_bandwidth": 3.35e12},
        sections={"prefill": 5_000_000, "decode": {"flops": 2_000, "bytes": 7_000}},
        unsupported_ops={"mylib.op": 3}, formula_errors={"mylib.op": "ValueError: bad"},
        uncalled_modules=["unused"],
    )
    for name, entry in data["modules"].items():
        entry.update({"class": "Block", "bytes": {"forward": 10, "backward": 20}, "estimated_seconds": 1e-3,
                      "bound": "memory"})
    page = render_html(data)
    assert "fvcore&#x27;s rules: a multiply-add is 1 (fvcore&#x27;s flop)" in page and "<small>MACs</small>" in page
    assert "recorded metrics: flops, bytes, seconds" in page
    assert re.findall(r'name="dc-metric" value="(\w+)"', page) == ["flops", "bytes", "estimated_seconds"]
    assert 'name="dc-colour" value="bound"' in page
    assert "<h1>dispatchcount report: Block</h1>" in page
    assert "<h2>Device: H100 SXM</h2>" in page
    assert '<th style="padding-left:1.7em">bfloat16</th><td class="dc-num" title="989,000,000,000,000">989T</td>' in page
    assert "<td>decode</td><td class=\"dc-num\" data-v=\"2000\" title=\"2,000\">2K</td>" in page
    assert 'id="dc-beyond"' in page and "<td>aten._scaled_dot_product_flash_attention</td>" in page
    assert "1 operator(s) not counted" in page
    assert "<td>mylib.op</td><td class=\"dc-num\" data-v=\"3\" title=\"3\">3</td><td>ValueError: bad</td>" in page
    assert "<li>unused</li>" in page


def test_every_string_from_the_data_is_escaped():
    data = hand_data(
        convention=EVIL, device={"name": EVIL, EVIL: EVIL}, sections={EVIL: 1},
        by_operator={EVIL: 5}, operator_calls={EVIL: 1}, unsupported_ops={EVIL: 2},
        formula_errors={EVIL: EVIL}, beyond_fvcore={EVIL: 5}, uncalled_modules=[EVIL], metrics=[EVIL],
    )
    data["modules"][f"stage.{EVIL}"] = {"class": EVIL, "forward": 1, "backward": 0, "bound": EVIL}
    data["by_module_and_operator"][f"stage.{EVIL}"] = {EVIL: 1}
    page = render_html(data, title=EVIL)
    assert "<img" not in page and "</script><" not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2  # the data and the code
    escaped = html.escape(EVIL, quote=True)
    for where in ("<title>", "<h1>", "<h2>Device: ", "<td>", "<li>"):
        assert where + escaped in page, where
    payload = embedded_json(page)  # no "<" inside: the JSON cannot end its script element
    assert payload["modules"][f"stage.{EVIL}"]["class"] == EVIL


def test_missing_and_non_finite_values_still_give_a_valid_page():
    page = render_html({})
    assert "<h1>dispatchcount report</h1>" in page and embedded_json(page)["order"] == [""]
    data = hand_data()
    data["modules"]["head"]["estimated_seconds"] = float("nan")
    data["device"] = {"name": "x", "peak_flops": float("inf")}
    payload = embedded_json(render_html(data))  # json.loads rejects nothing: NaN became null
    assert payload["modules"]["head"]["estimated_seconds"] is None
    only_by_module = render_html({"by_module": {"": 10, "a": 7, "a.b": 3}})
    assert embedded_json(only_by_module)["order"] == ["", "a", "a.b"]
    with pytest.raises(TypeError, match="data must be a dict"):
        render_html([1, 2])


def small_count() -> FlopMode:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with FlopMode(model) as fm:
        model(torch.randn(5, 4)).sum().backward()
    return fm


def test_to_html_and_repr_html_render_to_dict(tmp_path):
    fm = small_count()
    fm.to_html(tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page == render_html(fm.to_dict())
    modules = embedded_json(page)["modules"]
    assert modules["0"]["forward"] == 2 * 5 * 4 * 3  # the first Linear: one (5, 4) x (4, 3) matmul
    assert modules["2"]["backward"] == 2 * (2 * 5 * 2 * 3)  # input and weight gradients of the last
    frame = fm._repr_html_()
    assert frame.startswith('<iframe srcdoc="') and frame == notebook_html(fm.to_dict())
    assert html.unescape(frame.split('srcdoc="', 1)[1].split('" style=', 1)[0]) == page


def test_cli_html_option(tmp_path, capsys):
    out = tmp_path / "llama.html"
    assert cli_main(["examples.llama:llama_tiny", "--input-shape", "1,8", "--input-dtype", "int64",
                     "--device", "meta", "--depth", "0", "--html", str(out)]) == 0
    assert f"HTML report written to {out}" in capsys.readouterr().err
    payload = embedded_json(out.read_text(encoding="utf-8"))
    assert "lm_head" in payload["order"] and "layers.0" in payload["order"]
    assert "<h1>dispatchcount: examples.llama:llama_tiny</h1>" in out.read_text(encoding="utf-8")
    assert cli_main(["examples.llama:llama_tiny", "--input-shape", "1,8", "--html",
                     str(tmp_path / "no" / "such" / "dir.html")]) == 1
    assert "--html: the folder of" in capsys.readouterr().err


# -- in a browser ---------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: apt-get install -y --no-install-recommends chromium (.ci/run does)",
)

# Appended after the page's own script: it acts as a user would (clicks at a node's centre),
# then writes what it saw into the DOM that --dump-dom prints.
HARNESS = """<script>
(() => {
  const seen = {};
  const drawn = () => [...document.querySelectorAll(".dc-node")].map((el) => el.dataset.name);
  const node = (name) => [...document.querySelectorAll(".dc-node")].find((el) => el.dataset.name === name);
  const clickAt = (el) => {
    el.scrollIntoView({block: "center"});
    const box = el.getBoundingClientRect();
    const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    seen.clicked = hit.closest(".dc-node").dataset.name;
    hit.click();
  };
  const widths = (names) => Object.fromEntries(names.map((n) => [n, node(n) ? parseFloat(node(n).style.width) : null]));
  seen.initial = drawn();
  seen.details = document.querySelector("#dc-details h3").firstChild.textContent;
  seen.heading = document.querySelector("#dc-details h3").textContent;
  seen.imgs = document.querySelectorAll("img").length;
  seen.pwned = window.pwned || 0;
  seen.labels = [...document.querySelectorAll(".dc-node .dc-label")].map((el) => el.textContent);
  const target = document.body.dataset.zoom;
  if (target && node(target)) {
    clickAt(node(target));
    seen.zoomed = drawn();
    seen.zoomedDetails = document.querySelector("#dc-details h3").firstChild.textContent;
    seen.path = [...document.querySelectorAll("#dc-path button")].map((b) => b.title);
    seen.widths = widths(seen.zoomed);
    document.querySelector("input[name=dc-phase][value=forward]").click();
    seen.forwardWidths = widths(seen.zoomed);
    clickAt(node(target));
    seen.afterSecondClick = document.querySelector("#dc-details h3").firstChild.textContent;
    const name = document.querySelector("#dc-ops th");
    name.click();
    seen.sortedByName = [...document.querySelectorAll("#dc-ops tbody tr td:first-child")].map((td) => td.textContent);
  }
  if (document.body.dataset.metrics) {
    const now = () => Object.fromEntries([...document.querySelectorAll(".dc-node")].map(
      (el) => [el.dataset.name, [parseFloat(el.style.width), el.style.background]]));
    document.querySelector("input[name=dc-metric][value=bytes]").click();
    seen.bytes = now();
    document.querySelector("input[name=dc-metric][value=estimated_seconds]").click();
    seen.seconds = now();
    seen.phasesOff = [...document.querySelectorAll("input[name=dc-phase]")].filter((i) => i.disabled).map((i) => i.value);
    document.querySelector("input[name=dc-colour][value=bound]").click();
    seen.bound = now();
    seen.legend = document.getElementById("dc-legend").textContent;
  }
  const out = document.createElement("pre");
  out.id = "dc-test-result";
  out.textContent = JSON.stringify(seen);
  document.body.append(out);
})();
</script>
"""


def in_browser(page: str, zoom: str = "", metrics: bool = False) -> dict:
    """Load ``page`` from a file:// URL with the harness; what it saw, and the console's lines."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        body = f'<body data-zoom="{html.escape(zoom)}"' + (' data-metrics="1">' if metrics else ">")
        path.write_text(page.replace("<body>", body, 1)
                        .replace("</body>", HARNESS + "</body>"), encoding="utf-8")
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--no-first-run", f"--user-data-dir={tmp}/profile",
             "--enable-logging=stderr", "--v=0", "--window-size=1280,900", "--dump-dom", path.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    match = re.search(r'<pre id="dc-test-result">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the harness did not run (rc {result.returncode}):\n{result.stderr[-3000:]}"
    return {"console": console, **json.loads(html.unescape(match.group(1)))}


@pytest.fixture(scope="module")
def vmamba():
    from examples.vmamba import vmamba_tiny_v0

    with torch.device("meta"):
        model = vmamba_tiny_v0()
    with FlopMode(model) as fm:
        model(torch.randn(1, 3, 224, 224, device="meta")).sum().backward()
    return model, fm.to_dict()


@needs_chromium
def test_vmamba_report_in_chromium(vmamba):
    model, data = vmamba
    seen = in_browser(render_html(data), zoom="layers.2")
    assert seen["console"] == []  # no error, no warning, no log
    names = {name for name, _ in model.named_modules()}
    # The hierarchy: stages, blocks, SS2D and its projections, each under its drawn parent.
    for name in ("patch_embed", "layers", "layers.0", "layers.3", "layers.2.8", "layers.2.8.ss2d",
                 "layers.2.8.ss2d.in_proj", "layers.3.1.ss2d.out_proj", "layers.1.downsample"):
        assert name in seen["initial"], name
    assert set(seen["initial"]) <= names
    for name in seen["initial"]:
        assert name == "" or name.rpartition(".")[0] in seen["initial"], name
    assert seen["details"] == "model"
    assert seen["heading"] == "model" + type(model).__name__  # the module class, from to_dict()

    # Clicking layers.2 zooms: it spans the width, its ancestors stay above, other stages go.
    assert seen["clicked"] == "layers.2" and seen["zoomedDetails"] == "layers.2"
    assert seen["path"] == ["model", "layers", "layers.2"]
    assert not [n for n in seen["zoomed"] if n.startswith(("layers.0", "layers.1", "layers.3", "patch_embed"))]
    assert {f"layers.2.{i}" for i in range(9)} | {"layers.2.downsample"} <= set(seen["zoomed"])
    assert seen["widths"]["layers.2"] == seen["widths"]["layers"] == 100
    total = {n: m["forward"] + m["backward"] for n, m in data["modules"].items()}
    forward = {n: m["forward"] for n, m in data["modules"].items()}
    # Widths are shares of the parent (the page writes them to 3 decimals): of all FLOPs, then,
    # once the phase is switched, of the forward's (10.853% and 10.844% for each block).
    for child in [f"layers.2.{i}" for i in range(9)] + ["layers.2.downsample"]:
        assert seen["widths"][child] == pytest.approx(100 * total[child] / total["layers.2"], abs=1e-3)
        assert seen["forwardWidths"][child] == pytest.approx(100 * forward[child] / forward["layers.2"], abs=1e-3)
    # Clicking the zoomed node again zooms out to its parent.
    assert seen["afterSecondClick"] == "layers"
    operators = set(data["by_operator"]) | set(data["operator_calls"])
    assert seen["sortedByName"] == sorted(operators)


@needs_chromium
def test_hostile_module_names_stay_text_in_chromium():
    data = hand_data()
    data["modules"][f"stage.{EVIL}"] = {"forward": 10**9, "backward": 0, "class": EVIL}
    seen = in_browser(render_html(data))
    assert seen["console"] == []
    assert seen["imgs"] == 0 and seen["pwned"] == 0
    assert f"stage.{EVIL}" in seen["initial"] and EVIL in seen["labels"]


@needs_chromium
def test_bytes_time_and_bound_switches_in_chromium():
    data = hand_data()
    # bytes by phase; estimated seconds as one number; stage memory-bound, the rest compute-bound.
    for name, (fwd, bwd, secs, bound) in {"": (40, 60, 4.0, "compute"), "stage": (20, 30, 1.0, "memory"),
                                          "stage.0": (4, 6, 0.25, "memory"), "stage.1": (16, 24, 0.75, "memory"),
                                          "head": (20, 30, 3.0, "compute")}.items():
        data["modules"][name].update(bytes={"forward": fwd, "backward": bwd}, estimated_seconds=secs, bound=bound)
    seen = in_browser(render_html(data), metrics=True)
    assert seen["console"] == []
    width = lambda view: {name: w for name, (w, _) in seen[view].items()}  # noqa: E731
    assert width("bytes") == {"": 100, "stage": 50, "stage.0": 10, "stage.1": 40, "head": 50}
    assert width("seconds") == {"": 100, "stage": 25, "stage.0": 6.25, "stage.1": 18.75, "head": 75}
    assert seen["phasesOff"] == ["forward", "backward"]  # one number per module: no phase split
    assert seen["legend"] == "compute-boundmemory-bound"
    for name, (_, colour) in seen["bound"].items():
        r, _, b = map(int, re.findall(r"\d+", colour))
        assert (r > b) == (data["modules"][name]["bound"] == "memory" and name != ""), (name, colour)
