"""The operator panel in a real browser: Debian's chromium (apt) driven by selenium through
Debian's chromedriver, against the demo cell (real daemon, simulated devices; printer-1
alone of its three printers, so that an upload prints there) on a real
Mosquitto that checks passwords. One broker, one daemon, one panel and one browser for the
whole module; the tests run in order, each from the state the one before left.

A screenshot of the signed-in page is saved as a test artifact: `$CELLCTL_ARTIFACTS`
(default `<repo>/test-artifacts/`), `panel.png`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jobs.conftest import gcode
from mqtt_broker import Mosquitto, password_file
from panel_rig import demo_config
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver import ActionChains, Keys
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from cellctl.cli.mqtt import Remote, Target
from cellctl.telemetry.topics import Topics

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).parents[2]
ARTIFACTS = Path(os.environ.get("CELLCTL_ARTIFACTS") or ROOT / "test-artifacts")
WAIT_S = 10.0  # what the page may take to show a change
DEVICES = ["cell-plc", "mill-1", "printer-1", "robot1"]
PASSWORDS = {"cell": "cell-pw", "panel": "panel-pw", "olga": "olga-pw", "bob": "bob-pw"}
ACCESS = """[access]
[access.users]
panel = ["frontend"]
olga = ["operator", "planner"]
bob = ["viewer"]

"""


class Rig:
    def __init__(self, url: str, broker: Mosquitto, browser: WebDriver, where: Path) -> None:
        self.url = url
        self.broker = broker
        self.port = broker.port
        self.b = browser
        self.where = where

    def remote(self, user: str) -> Remote:
        target = Target("127.0.0.1", self.port, Topics("demo"), True, None, user, PASSWORDS[user])
        return Remote.connect(target, 10)

    def ask(self, user: str, command: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.remote(user)
        try:
            return r.command(command, body)
        finally:
            r.close()

    def until(self, what: str, check: Callable[[], Any], within_s: float = WAIT_S) -> Any:
        deadline = time.monotonic() + within_s
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                seen = self.b.execute_script(
                    "return JSON.stringify([view && view.cell, $('toast').textContent])"
                )
                raise AssertionError(f"not within {within_s:g} s: {what}; the page's cell: {seen}")
            time.sleep(0.1)

    def job_state(self, job: str) -> str:
        [record] = self.ask("olga", "jobs", {"job": job})["result"]
        state: str = record["state"]
        return state

    def states(self) -> dict[str, str]:
        """Each device card's state, read in one go (the page redraws cards as they change)."""
        script = """return Object.fromEntries([...document.querySelectorAll(
            '#devices [data-device]')].map(c => [c.dataset.device, c.dataset.state]))"""
        out: dict[str, str] = self.b.execute_script(script)
        return out

    def text(self, css: str) -> str:
        out: str = self.b.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css
        )
        return out

    def attr(self, css: str, name: str) -> str | None:
        """An attribute of the first element matching `css`, None while there is none."""
        out: str | None = self.b.execute_script(
            "const e = document.querySelector(arguments[0]); "
            "return e ? e.getAttribute(arguments[1]) : null",
            css,
            name,
        )
        return out

    def click(self, css: str) -> None:
        """A real click on the element, found again if the page redrew it meanwhile."""

        def once() -> bool:
            try:
                self.b.find_element(By.CSS_SELECTOR, css).click()
                return True
            except (StaleElementReferenceException, NoSuchElementException):
                return False

        self.until(f"a click on {css}", once)

    def sign_in(self, user: str, password: str) -> None:
        self.b.find_element(By.ID, "user").clear()
        self.b.find_element(By.ID, "user").send_keys(user)
        self.b.find_element(By.ID, "password").send_keys(password)
        self.b.find_element(By.CSS_SELECTOR, "#signin button[type=submit]").click()

    def fetch(self, path: str, body: dict[str, Any], token: str | None) -> dict[str, Any]:
        """A POST from the page's own origin, with its cookies; the status and answer."""
        script = """
            const [path, body, token, done] = arguments;
            const headers = {"Content-Type": "application/json"};
            if (token !== null) headers["X-CSRF-Token"] = token;
            fetch(path, {method: "POST", headers, body: JSON.stringify(body)})
              .then(async r => done({status: r.status, body: await r.text()}));
        """
        out: dict[str, Any] = self.b.execute_async_script(script, path, body, token)
        return out


def _text(proc: subprocess.Popen[str], within_s: float) -> str:
    """The first line the panel prints (its URL), bounded."""
    line: list[str] = []
    reader = threading.Thread(
        target=lambda: line.append(proc.stdout.readline() if proc.stdout else "")
    )
    reader.start()
    reader.join(within_s)
    if not line or not line[0].strip():
        raise AssertionError(f"the panel printed no URL within {within_s:g} s")
    return line[0].strip()


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    for path in (CHROMIUM, CHROMEDRIVER):  # a missing browser fails, never skips
        assert Path(path).exists(), f"{path} missing: apt-get install chromium chromium-driver"
    where = tmp_path_factory.mktemp("browser")
    pw = password_file(where, PASSWORDS)
    broker = Mosquitto(where / "broker", anonymous=False, extra=f"password_file {pw}\n")
    broker.start()
    cfg = demo_config(where, broker.port, signin_attempts=6)
    text = cfg.read_text()
    # One printer of the demo's three: an upload prints on printer-1, deterministically.
    text = re.sub(
        r"(?ms)^\[devices\.printer-[23][^\n]*\n.*?(?=^\[(?!devices\.printer-[23]))", "", text
    )
    text = re.sub(r"(?ms)^\[access\].*?(?=^\[mqtt\])", ACCESS, text)
    text = text.replace(
        "embedded = false\n",
        'embedded = false\nusername = "cell"\npassword = { env = "CELL_MQTT_PASSWORD" }\n',
    )
    text = text.replace(
        'mqtt_username = "panel"\n',
        'mqtt_username = "panel"\nmqtt_password = { env = "PANEL_MQTT_PASSWORD" }\n',
    )
    cfg.write_text(text)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CELL_MQTT_PASSWORD": PASSWORDS["cell"],
        "PANEL_MQTT_PASSWORD": PASSWORDS["panel"],
    }
    env.pop("CELLCTL_MQTT_USERNAME", None)
    procs: list[subprocess.Popen[Any]] = []
    browser: WebDriver | None = None
    try:
        with open(where / "daemon.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cellctl", "run", "-c", str(cfg)],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    env=env,
                )
            )
        with open(where / "panel.log", "wb") as log:
            panel = subprocess.Popen(
                [sys.executable, "-m", "cellctl", "panel", "-c", str(cfg)],
                stdout=subprocess.PIPE, stderr=log, env=env, text=True,
            )  # fmt: skip
            procs.append(panel)
        url = _text(panel, 30)
        opts = Options()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,800"):  # fmt: skip
            opts.add_argument(arg)  # 1280×800: a 10-inch tablet in landscape
        browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        browser.set_script_timeout(WAIT_S)
        browser.get(url)
        yield Rig(url, broker, browser, where)
    finally:
        if browser is not None:
            browser.quit()
        for proc in reversed(procs):
            _stop(proc)
        broker.stop()


def test_sign_in_checks_the_password_and_the_page_shows_the_cell(rig: Rig) -> None:
    b = rig.b
    rig.until("the sign-in form", lambda: b.find_element(By.ID, "user").is_displayed())
    rig.sign_in("olga", "wrong")
    rig.until(
        "the broker's refusal on the page",
        lambda: "refused" in rig.text("#signin-error"),
    )
    rig.sign_in("olga", PASSWORDS["olga"])
    rig.until("signed in", lambda: rig.b.find_element(By.ID, "who").text == "olga")
    # The daemon may still be connecting its devices: every card, each in a known state.
    rig.until(
        "four devices, idle",
        lambda: rig.states() == dict.fromkeys(DEVICES, "idle"),
        within_s=40,
    )
    assert b.find_element(By.ID, "estop").is_displayed()
    assert b.find_element(By.ID, "who").text == "olga"
    # Numbers arrive: the hot end's temperature has a value with its unit.
    rig.until(
        "printer-1's metrics",
        lambda: "°C" in rig.text('[data-device="printer-1"]'),
    )
    assert not b.find_element(By.ID, "signin").is_displayed()


def test_upload_and_print_from_the_library_shows_the_printer_running(rig: Rig) -> None:
    part = rig.where / "bracket.gcode"
    part.write_text(gcode(600))
    rig.b.find_element(By.ID, "upload-file").send_keys(str(part))
    rig.click('#upload button[value="true"]')
    rig.until("printer-1 running", lambda: rig.states().get("printer-1") == "execute")
    rig.until(
        "the job in the queue", lambda: rig.attr('#queue tr[data-job^="bracket-"]', "data-state")
    )
    rig.until(
        "the program in the library",
        lambda: rig.attr('#library [data-program="bracket.gcode"]', "data-program"),
    )
    # The library is the cell's program store: one click prints a stored program by its
    # hash; while its job is unfinished that is the same job (as an upload again would be).
    job = rig.attr('#queue tr[data-job^="bracket-"]', "data-job")
    rig.click('#library [data-program="bracket.gcode"] [data-action="print"]')
    rig.until("the cell's answer", lambda: f"bracket.gcode: job {job}" in rig.text("#toast"))
    # The artifact (and docs/panel-operator.png): the page while the printer runs, all of it.
    rig.until(
        "printer-1's progress", lambda: rig.attr('[data-device="printer-1"] progress', "value")
    )
    rig.b.set_window_size(1280, 1700)
    rig.b.execute_script("window.scrollTo(0, 0); renderChart()")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    rig.b.save_screenshot(str(ARTIFACTS / "panel.png"))
    rig.b.set_window_size(1280, 800)


def test_a_held_step_is_answered_from_the_worklist(rig: Rig) -> None:
    # The operator stops the print from its card: the step is held, the worklist asks.
    rig.click('[data-device="printer-1"] [data-action="stop"]')
    held = '#worklist [data-held^="bracket-"]'
    key = rig.until("the held step in the worklist", lambda: rig.attr(held, "data-held"))
    assert "stopped at printer-1" in rig.text(held)
    actions = rig.b.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' button')]"
        ".map(b => b.dataset.action)",
        held,
    )
    assert sorted(actions) == ["done", "fail", "resume", "retry"]
    rig.click(f'{held} [data-action="fail"]')
    job = key.rpartition("/")[0]
    rig.until(
        "the job failed in the cell",
        lambda: rig.job_state(job) == "failed",
    )
    rig.until("the hold gone from the worklist", lambda: rig.attr(held, "data-held") is None)


def test_a_planner_sets_a_priority_from_the_queue(rig: Rig) -> None:
    # A setup no device has: the job waits in the queue while its priority changes.
    step = {"process": "print", "gcode": "G28\n", "setup": {"material": "unobtainium"}}
    assert rig.ask("olga", "submit", {"job": "waits", "steps": [step]})["outcome"] == "accepted"
    rig.b.execute_script("refreshJobs()")
    field = '#queue tr[data-job="waits"] [data-priority]'
    rig.until("the priority field", lambda: rig.attr(field, "value") == "0")
    rig.b.find_element(By.CSS_SELECTOR, field).clear()
    rig.b.find_element(By.CSS_SELECTOR, field).send_keys("9")
    rig.click('#queue tr[data-job="waits"] [data-action="priority"]')
    rig.until("priority 9 in the cell", lambda: rig.ask("olga", "jobs", {"job": "waits"})[
        "result"][0]["priority"] == 9)  # fmt: skip
    assert rig.ask("olga", "cancel", {"job": "waits"})["outcome"] == "accepted"


def test_the_stop_button_stops_every_device_and_the_reset_brings_them_back(rig: Rig) -> None:
    rig.click("#estop")
    rig.until("every device aborted on the page", lambda: set(rig.states().values()) == {"aborted"})
    devices = rig.ask("olga", "devices", {})["result"]
    assert {d["id"]: d["state"] for d in devices} == dict.fromkeys(DEVICES, "aborted")
    # The cell reset after the stop: one click, every device back to idle.
    rig.until("the reset button", lambda: rig.b.find_element(By.ID, "reset-all").is_displayed())
    rig.click("#reset-all")
    rig.until("every device idle again", lambda: set(rig.states().values()) == {"idle"}, 30)
    devices = rig.ask("olga", "devices", {})["result"]
    assert {d["id"]: d["state"] for d in devices} == dict.fromkeys(DEVICES, "idle")


def test_a_viewer_sees_no_cancel_and_cannot_use_it(rig: Rig) -> None:
    b = rig.b
    part = rig.where / "queued.gcode"
    part.write_text(gcode(600))
    b.find_element(By.ID, "upload-file").send_keys(str(part))
    rig.click('#upload button[value="true"]')
    row = '#queue tr[data-job^="queued-"]'
    job = rig.until("the job queued", lambda: rig.attr(row, "data-job"))
    rig.until("olga's cancel button", lambda: rig.attr(f'{row} [data-action="cancel"]', "type"))
    rig.click("#logout")
    rig.until("the sign-in form again", lambda: b.find_element(By.ID, "user").is_displayed())
    # With the keyboard only: the form takes the focus, Tab to the password, Enter.
    rig.until("the focus in the user field", lambda: rig.b.execute_script(
        "return document.activeElement.id") == "user")  # fmt: skip
    ActionChains(b).send_keys("bob", Keys.TAB, PASSWORDS["bob"], Keys.ENTER).perform()
    row = f'#queue tr[data-job="{job}"]'
    rig.until("bob's queue", lambda: rig.attr(row, "data-job"))
    assert rig.attr(f"{row} button", "data-action") is None  # no cancel, no button at all
    assert rig.attr(f"{row} [data-priority]", "value") is None  # no priority field either
    program = '#library [data-program="queued.gcode"]'
    sha = rig.until("bob's library", lambda: rig.attr(program, "data-sha256"))
    assert rig.attr('#library [data-action="print"]', "type") is None  # a viewer prints nothing
    assert not b.find_element(By.ID, "upload").is_displayed()
    assert b.find_element(By.ID, "estop").is_displayed()  # everyone may stop the cell
    token = b.execute_script("return me.csrf")
    refused = rig.fetch("/ui/command", {"command": "cancel", "body": {"job": job}}, token)
    assert refused["status"] == 403 and "may not cancel" in refused["body"], refused
    body = {"command": "set_priority", "body": {"job": job, "priority": 5}}
    refused = rig.fetch("/ui/command", body, token)
    assert refused["status"] == 403 and "may not set_priority" in refused["body"], refused
    refused = rig.fetch("/ui/print", {"sha256": sha, "name": "queued.gcode"}, token)
    assert refused["status"] == 403 and "may not submit" in refused["body"], refused
    # The cell itself refuses bob too (his own connection, his own name).
    reply = rig.ask("bob", "cancel", {"job": job})
    assert reply["outcome"] == "rejected" and "lacks permission 'cancel'" in reply["reason"]
    reply = rig.ask("bob", "set_priority", {"job": job, "priority": 5})
    assert reply["outcome"] == "rejected" and "lacks permission 'set_priority'" in reply["reason"]
    assert rig.job_state(job) != "cancelled"


def test_posts_without_the_csrf_token_are_refused(rig: Rig) -> None:
    # Signed in (bob's session from the test before): no token, a wrong one: 403, nothing sent.
    body = {"command": "estop", "body": {"reason": "forged"}}
    for token in (None, "not-the-token"):
        out = rig.fetch("/ui/command", body, token)
        assert out["status"] == 403 and "CSRF" in out["body"], out
    assert rig.fetch("/ui/reset-all", {}, None)["status"] == 403
    assert rig.fetch("/ui/logout", {}, None)["status"] == 403
    # Another site's form: the session cookie is SameSite=Strict, and no token either.
    req = urllib.request.Request(
        f"{rig.url}/ui/command",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=WAIT_S)
    assert err.value.code == 401
    assert all(s != "aborted" for s in rig.states().values())  # no forged stop went out


def test_after_the_broker_restarts_the_page_is_right_and_the_session_works(rig: Rig) -> None:
    """Without persistence the broker forgets its retained messages: the daemon publishes
    its snapshots again, the panel's view takes them, and the user's own connection
    (reconnected by paho) subscribes its replies again."""
    rig.broker.stop()
    rig.until("the page saying the cell is offline", lambda: "offline" in rig.text("#link"))
    rig.broker.start()
    rig.until("the cell online again", lambda: rig.text("#link") == "cell online", 30)
    devices = rig.ask("olga", "devices", {})["result"]
    cell = {d["id"]: d["state"] for d in devices}
    rig.until(f"the page showing {cell}", lambda: rig.states() == cell)
    script = """const done = arguments[0];
        fetch("/ui/jobs").then(async r => done({status: r.status, body: await r.json()}));"""
    jobs = rig.until("bob's queue asked on his own connection again", lambda: (
        out := rig.b.execute_async_script(script))["status"] == 200 and out)  # fmt: skip
    assert jobs["body"]["outcome"] == "accepted"


def test_sign_in_is_rate_limited_per_source_not_locked(rig: Rig) -> None:
    """Six attempts a minute from one address (the config of this module), then 429."""
    codes = []
    for _ in range(8):
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        token = json.loads(opener.open(f"{rig.url}/ui/me", timeout=WAIT_S).read())["csrf"]
        req = urllib.request.Request(
            f"{rig.url}/ui/login",
            data=json.dumps({"user": "olga", "password": "guess"}).encode(),
            headers={"Content-Type": "application/json", "X-CSRF-Token": token},
            method="POST",
        )
        try:
            opener.open(req, timeout=WAIT_S)
            codes.append(200)
        except urllib.error.HTTPError as exc:
            codes.append(exc.code)
            if exc.code == 429:
                assert int(exc.headers["Retry-After"]) >= 1
    assert 401 in codes and codes[-1] == 429, codes
    # Signed-in sessions are untouched by it: bob's page still works.
    assert rig.b.execute_script("return me.user") == "bob"
