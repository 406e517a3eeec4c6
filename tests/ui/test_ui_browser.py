"""The UI in a real browser (headless Debian Chromium through chromedriver) against a served root of
recorded runs of the tiny model, a live run, and a config that trains the tiny model for real.

With NOVA_UI_SCREENSHOTS=DIR the tests also save a screenshot of each page there (docs/ui.md's).
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from ui_support import (  # noqa: F401  (the fixtures)
    Server,
    browser_fixture,
    configs_dir_fixture,
    server_fixture,
    trainer_stand_in_fixture,
    ui_root_fixture,
    wait_for,
)


def shot(browser: Any, name: str) -> None:
    """A screenshot for docs/ui.md, when asked for."""
    out = os.environ.get("NOVA_UI_SCREENSHOTS")
    if not out:
        return
    from PIL import Image  # matplotlib's dependency: always installed with nova

    Path(out).mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=64).save(Path(out) / f"ui-{name}.png", optimize=True)  # small enough for the repo


def text_of(browser: Any, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def launch_states(server: Server) -> list[str]:
    request = urllib.request.Request(server.base + "/api/launches", headers={"x-nova-token": server.token})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [x["state"] for x in json.loads(response.read())["launches"]]


def points(browser: Any, chart: str) -> int:
    return int(browser.find_element(By.CSS_SELECTOR, f'[data-chart="{chart}"]').get_attribute("data-points"))


def test_runs_page_lists_every_run(browser: Any, server: Server) -> None:
    browser.get(server.at("/"))
    rows = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr"), what="the runs table")
    table = text_of(browser, "#runs")
    assert len(rows) == 3 and "doica" in table and "sora" in table and "live" in table
    states = [e.get_attribute("data-state") for e in browser.find_elements(By.CSS_SELECTOR, "#runs [data-state]")]
    assert states == ["finished", "finished", "running"]
    assert "12 of 12" in table and "alert: grad_norm" in table
    shot(browser, "runs")


def test_run_page_draws_curves_and_tables(browser: Any, server: Server) -> None:
    browser.get(server.at("/run?path=demo/sora"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '[data-chart="loss"] canvas'), what="the loss chart")
    assert points(browser, "loss") == 19  # sft steps 0-10, then dpo's on after them
    for chart in ("lr", "grad_norm", "tokens", "memory", "rewards"):
        assert browser.find_elements(By.CSS_SELECTOR, f'[data-chart="{chart}"] canvas'), chart
    body = text_of(browser, "main")
    for expected in ("Forgetting", "doica", "3.4%", "arc_easy", "trained tokens", "Preflight", "Fingerprint",
                     "adapter of phase sora"):
        assert expected in body, expected
    shot(browser, "run")


def test_html_in_records_is_shown_as_text(browser: Any, server: Server) -> None:
    browser.get(server.at("/run?path=demo/sora"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#smoke"), what="the smoke answers")
    assert "<script>window.__nova_pwned = 1</script><b>bold?</b> & <i>who are you</i>" in text_of(browser, "#smoke")
    assert 'sora <img src=x onerror="window.__nova_pwned=2">' in text_of(browser, "#eval")
    assert not browser.find_elements(By.CSS_SELECTOR, "#smoke b, #smoke script, #eval img")
    assert browser.execute_script("return window.__nova_pwned === undefined")
    browser.execute_script("document.getElementById('smoke').scrollIntoView()")
    shot(browser, "run-tables")


def test_a_live_runs_curve_grows(browser: Any, server: Server, ui_root: Path) -> None:
    browser.get(server.at("/run?path=live"))
    wait_for(lambda: points(browser, "loss") == 5, what="the live run's first 5 points")
    assert browser.find_element(By.CSS_SELECTOR, "h1 [data-alive]").get_attribute("data-alive") == "yes"
    more = (ui_root / "demo" / "doica" / "metrics.jsonl").read_text().splitlines()[5:10]  # step 4's eval, 5-8
    with (ui_root / "live" / "metrics.jsonl").open("a") as fh:
        fh.write("\n".join(more) + "\n")
    wait_for(lambda: points(browser, "loss") == 9, timeout=10, what="the curve to grow to 9 points")


def test_editor_shows_a_typo_as_the_cli_does(browser: Any, server: Server) -> None:
    browser.get(server.at("/editor?path=tiny.yaml"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#valid"), what="the config to validate")
    area = browser.find_element(By.CSS_SELECTOR, "#config-text")
    area.send_keys(Keys.CONTROL, Keys.END)
    area.send_keys("\nmonitor: {grad_norm_maxx: 5}\n")
    problems = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#problems"), what="the typo's error")
    assert "monitor.grad_norm_maxx: unknown key (did you mean 'grad_norm_max'?)" in problems[0].text
    assert problems[0].text.startswith("error: invalid config ")
    typed = area.get_attribute("value").splitlines()
    line = next(i for i, text in enumerate(typed, 1) if "grad_norm_maxx" in text)
    assert browser.find_element(By.CSS_SELECTOR, ".problems li").get_attribute("data-line") == str(line)
    assert f":{line} monitor.grad_norm_maxx" in problems[0].text
    shot(browser, "editor-error")


@pytest.mark.trains
def test_launch_refuse_a_second_and_stop(browser: Any, server: Server, ui_root: Path) -> None:
    browser.get(server.at("/editor?path=tiny.yaml"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#valid"), what="the config to validate")
    browser.find_element(By.CSS_SELECTOR, "#launch").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#launched"), timeout=90, what="the launch")
    run = ui_root / "launched"
    # a logged training step: from the first optimizer step on a stop saves a checkpoint (before it, it stops at once)
    wait_for(lambda: '"loss"' in ((run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""),
             timeout=120, what="training to log its first step")
    browser.find_element(By.CSS_SELECTOR, "#launch").click()  # the same run again, while it trains
    refused = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#refused"), timeout=30, what="a refusal")
    assert "is in use by running (pid" in refused[0].text
    shot(browser, "editor-launched")
    browser.get(server.at("/run?path=launched"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#stop"), what="the stop button").pop().click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'h1 [data-state="interrupted"]'), timeout=60,
             what="the run to stop")
    launches = wait_for(lambda: [x for x in launch_states(server) if x != "running"], timeout=30, what="the exit")
    assert launches == ["exited 3"]  # nova train's clean stop: a checkpoint, then exit code 3
    shot(browser, "run-stopped")


def test_compare_overlays_diffs_and_answers(browser: Any, server: Server) -> None:
    browser.get(server.at("/compare?path=demo/doica&path=demo/sora"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#config-diff"), what="the config diff")
    legend = text_of(browser, '[data-chart="loss"]')
    assert "doica: loss" in legend and "sora: eval_loss" in legend
    diff = text_of(browser, "#config-diff")
    assert "name" in diff and json.dumps("doica") in diff and json.dumps("sora") in diff
    assert "lora.r" in diff and "model.quantization" not in diff  # only the keys that differ...
    browser.find_element(By.CSS_SELECTOR, "#all-keys").click()
    assert "model.quantization" in text_of(browser, "#config-diff")  # ...until every key is asked for
    assert "Tell me who you are" in text_of(browser, "#answers")
    shot(browser, "compare")


def test_editor_runs_preflight(browser: Any, server: Server) -> None:
    browser.get(server.at("/editor?path=tiny.yaml"))
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#valid"), what="the config to validate")
    browser.find_element(By.CSS_SELECTOR, "#run-preflight").click()
    verdict = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#preflight-verdict"), timeout=90,
                       what="the preflight verdict")
    assert verdict[0].get_attribute("data-verdict") == "warn"  # no GPU here, and 5000 steps over 16 records
    assert "likely to overfit" in text_of(browser, "#preflight") and "fix" in text_of(browser, "#preflight")


def test_a_browser_without_the_token_is_refused(browser: Any, server: Server) -> None:
    browser.delete_all_cookies()
    try:
        for path in ("/", "/run?path=demo/sora", "/api/runs"):
            browser.get(server.base + path)
            assert "needs the token" in text_of(browser, "body") and "sora" not in text_of(browser, "body")
    finally:
        browser.get(server.at("/"))  # the start-up URL sets the cookie again for the tests after this one
