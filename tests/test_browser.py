"""What a person sees, in a real browser (headless Chromium, Debian's package): the sweep
report's index.html renders its headline and every plot, and `mlflow ui` shows the sweep's
parent run with its trials and confirmation runs as child runs. Skipped where no Chromium
is installed (CI installs it: .ci/run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from _helpers import free_port, mlflow_runs, run, sweep_args

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="no Chromium here: apt-get install chromium (CI installs it)"
    ),
]

# Appended to a copy of index.html: the DOM dump then says which images the browser loaded.
IMAGE_PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def dump_dom(url: str) -> str:
    """The page's DOM after its scripts ran (Chromium's --dump-dom)."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--allow-file-access-from-files", "--virtual-time-budget=20000",
        "--window-size=1400,2000", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def text_of(dom: str) -> str:
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, teacher_cache: Path) -> Path:
    workdir = tmp_path_factory.mktemp("browser")
    args = sweep_args(
        workdir, "browser", 3,
        "hydra.sweeper.confirm.enabled=true", "hydra.sweeper.confirm.seeds=2",
        "hydra.sweeper.confirm.top_k=1", cache_dir=teacher_cache,
    )  # fmt: skip
    proc = run(workdir, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_the_report_renders_its_headline_and_every_plot(swept: Path) -> None:
    (folder,) = (swept / "reports").iterdir()
    page = (folder / "index.html").read_text()
    probe = folder / "index_probe.html"
    probe.write_text(page.replace("</body>", IMAGE_PROBE + "</body>"))
    dom = dump_dom(probe.as_uri())
    shown = text_of(dom)
    assert "vs the same recipe without a teacher" in shown
    assert "Confirmed on fresh seeds" in shown and "Search only, not confirmed" in shown
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-loaded="(\d+)"', dom).group(1))
    assert images >= 4 and loaded == images  # history, importance (or a note), curves, params


def test_mlflow_ui_lists_the_sweeps_trials_under_its_parent_run(swept: Path) -> None:
    tracking = f"sqlite:///{swept / 'mlflow.db'}"
    (parent,) = [r for r in mlflow_runs(tracking) if r.data.tags.get("kdsweep.role") == "sweep"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", tracking, "--workers", "1"],
        cwd=swept, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        experiment = parent.info.experiment_id
        runs_page = text_of(dump_dom(f"{base}/#/experiments/{experiment}/runs"))
        assert "Training runs" in runs_page and "sweep-browser" in runs_page
        run_page = text_of(dump_dom(f"{base}/#/experiments/{experiment}/runs/{parent.info.run_id}"))
        assert "Child runs" in run_page
        assert re.search(r"trial-\d+-light-kd-adam-digits", run_page)
        assert re.search(r"confirm-(top1|ablation|tutorial|ce_default)-seed100\d", run_page)
        assert "vs the same recipe without a teacher" in run_page  # the run's description
    finally:
        server.terminate()
        server.wait(timeout=30)
