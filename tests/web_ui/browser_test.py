#!/usr/bin/env python3
"""End-to-end test of backuphub's web UI in a real headless browser.

    python3 tests/web_ui/browser_test.py [--bin target/debug/backuphub] [--no-require-all-metrics]

What it does: starts the real daemon binary (`backuphub daemon --config ...`) on a
free port of 127.0.0.1, with a fresh repository, a `[verify]` section, a prune every
10 s, `[daemon] attempts = 1` and three jobs: `files` (a `path` job over a small fixture
tree), `slow` (a `command` job that sleeps 4 s, so its run can be seen going) and `pg`
(a `postgres` job with a `[drill]` whose server does not exist). Every schedule is
`0 0 0 1 1 *`, so the daemon's catch-up runs each job once at start (a due time passed
and no success yet): `files` and `slow` complete, `pg` fails. Before the daemon starts,
a saved restore-drill result is written to `<state_dir>/drills/pg.json` (see
`write_saved_drill`). The test waits (GET /api/v1/status) for the catch-up runs, then
drives Debian's `chromium` (headless, phone-sized) through Debian's `chromedriver` with
Selenium:

 1. the overview `/` is readable without logging in: job table with the catch-up
    outcomes (`files` and `slow` `complete`, `pg` `failed` with its last error shown,
    and `restore drill passed` under `pg`), no "Run now" form, a login link
    (screenshot saved);
 2. a snapshot page without a session lands on the login page;
 3. a wrong token is refused ("wrong token", 401); the right one logs in, and the session
    cookie is HttpOnly and SameSite=Strict, so page scripts cannot read it;
 4. "Run now" on `slow`: reloading the overview shows it `running`, then `complete`; the
    status API shows a new run id with trigger `web`;
 5. the `files` job page links the snapshot; browsing it from the root down to the
    fixture directory shows the files; a file downloaded by the browser, a 200 KiB
    random file and a tar of a directory fetched with the browser's cookie are
    byte-identical to the source;
 6. CSRF: the run form is refused (403) without or with a wrong `csrf` field, and a
    request without a session is refused too;
 7. the JSON API still works: a verification started with the bearer token finishes
    clean (and the overview's verification section says "no damage"); after a prune
    has run, a live /metrics scrape passes tests/monitoring/check.sh (every metric name
    the dashboard and alerts use must be exported, drill and prune ones included);
 8. logging out hides the operator controls again.

Why: the web UI is what an operator uses from a phone when something is wrong, so what
matters is what a real browser does with it - redirects, cookies, forms, downloads -
not only what the handlers return. Unit tests of the handlers cannot show that a
cookie is readable from JavaScript, that a download is saved under the right name, or
that a button is clickable on a small screen.

Nothing is downloaded at run time: the driver is given explicitly
(`Service(executable_path=shutil.which("chromedriver"))`), so Selenium Manager never
runs. Needs: chromium, chromium-driver (Debian), python3 with selenium and PyYAML
(PyYAML for check.sh), promtool (Debian: prometheus) for check.sh.

Artefacts go to target/test-artifacts/: web-ui-overview.png,
web-ui-overview-logged-in.png, metrics.txt; on failure also web-ui-failure.png and
web-ui-failure.html. Exits 0 when every check passed, 1 with a FAIL line otherwise.
"""

import argparse
import datetime as dt
import html.parser
import io
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "target" / "test-artifacts"
SESSION_COOKIE = "backuphub_session"
JOB = "files"  # the path job whose snapshot is browsed and downloaded
SLOW = "slow"  # a command job that takes over 4 s: its "Run now" is seen running
PG = "pg"  # a postgres job without a server: fails; carries the saved drill result
SLOW_SECONDS = 4
STATUSES = {"never run", "running", "complete", "partial", "failed"}
# Metric names that only appear after a prune or from a restore drill's result. This
# setup exports them all (a prune runs every 10 s; the saved drill result of `pg` is
# loaded at start), so the default --require-all-metrics fails without them;
# --no-require-all-metrics only warns about these (to look past a daemon that regressed
# there while working on something else).
OPTIONAL_METRIC_PREFIXES = ("backuphub_drill_", "backuphub_prune_")


class Failure(Exception):
    """A check failed; the message says which and what was seen."""


CHECKS = 0


def check(cond, message):
    """Like assert, but survives `python3 -O` and counts what was checked."""
    global CHECKS
    if not cond:
        raise Failure(message)
    CHECKS += 1


def ok(message):
    print(f"  ok: {message}", flush=True)


def step(title):
    print(f"\n== {title}", flush=True)


def warn(message):
    print(f"  WARNING: {message}", flush=True)


# ---------------------------------------------------------------- plain HTTP (urllib)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a 3xx is returned as is, so its status and Location can be checked


# No proxy from the environment: everything here is 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name) if self.headers is not None else None

    def header_all(self, name):
        return self.headers.get_all(name) or [] if self.headers is not None else []

    def text(self):
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return json.loads(self.body)


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            return Response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read())


def cookie_header(session):
    return {"Cookie": f"{SESSION_COOKIE}={session}"}


def form_body(fields):
    return urllib.parse.urlencode(fields).encode()


FORM_CT = {"Content-Type": "application/x-www-form-urlencoded"}


def location_path(resp):
    loc = resp.header("Location") or ""
    return urllib.parse.urlsplit(loc)


class _FormFields(html.parser.HTMLParser):
    """The name=value pairs of the <input>s inside the form with a given id."""

    def __init__(self, form_id):
        super().__init__()
        self.form_id = form_id
        self.depth = 0
        self.found = False
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            if self.depth:
                self.depth += 1
            elif a.get("id") == self.form_id:
                self.depth, self.found = 1, True
        elif tag == "input" and self.depth and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self.depth:
            self.depth -= 1


def form_fields(page, form_id):
    p = _FormFields(form_id)
    p.feed(page)
    check(p.found, f"no <form id={form_id!r}> in the page")
    return p.fields


# ---------------------------------------------------------------- the daemon


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, binary, config, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [str(binary), "daemon", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, base, limit=60):
        deadline = time.monotonic() + limit
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            check(code is None, f"the daemon exited with status {code} before it was ready")
            try:
                r = http("GET", f"{base}/readyz", timeout=5)
                if r.status == 200:
                    return
                last = f"{r.status} {r.text().strip()}"
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise Failure(f"GET /readyz did not return 200 within {limit} s (last: {last})")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print("daemon did not stop within 20 s of SIGTERM; sending SIGKILL", flush=True)
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def log_tail(self, lines=200):
        try:
            text = Path(self.log_path).read_text(errors="replace").splitlines()
        except OSError as e:
            return f"(cannot read the daemon log: {e})"
        return "\n".join(text[-lines:])


# ---------------------------------------------------------------- the browser


def make_driver(download_dir):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise Failure("selenium is not installed (pip install selenium; see tests/run-all.sh)")
    chromedriver = shutil.which("chromedriver")
    check(chromedriver, "chromedriver not found (Debian: apt-get install chromium-driver)")
    chromium = shutil.which("chromium")
    check(chromium, "chromium not found (Debian: apt-get install chromium)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=412,915",
                "--no-proxy-server", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir),
        "download.prompt_for_download": False,
    })
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(download_dir)})
    # Headless chromium keeps windows at least 500 px wide; a phone is narrower.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 412, "height": 915, "deviceScaleFactor": 1, "mobile": True})
    return driver


def by_css():
    from selenium.webdriver.common.by import By
    return By.CSS_SELECTOR


def find(root, css, what):
    found = root.find_elements(by_css(), css)
    check(found, f"{what}: nothing matches {css!r}")
    return found[0]


def find_all(root, css):
    return root.find_elements(by_css(), css)


def path_of(driver):
    return urllib.parse.urlsplit(driver.current_url).path


def wait_for(cond, limit, what, interval=0.2):
    """Polls `cond` until it returns something true; `what` may be a callable, so that
    the failure message can say what was seen last."""
    deadline = time.monotonic() + limit
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Failure(f"{what() if callable(what) else what}: not within {limit} s")
        time.sleep(interval)


def click(driver, element, what):
    """A real click, as a user's tap, after scrolling the element into view."""
    from selenium.common.exceptions import WebDriverException
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    try:
        element.click()
    except WebDriverException as e:
        raise Failure(f"cannot click {what} on a 412x915 screen: {e.msg or e}")


def screenshot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    check(driver.save_screenshot(str(path)), f"saving screenshot {path}")
    ok(f"screenshot {path.relative_to(REPO_ROOT)}")


def dom_attr(element, name):
    """The attribute as written in the HTML (not resolved to an absolute URL)."""
    return element.get_dom_attribute(name)


def same_path(href, expected_path):
    return urllib.parse.urlsplit(href or "").path == expected_path


def squash(text):
    return " ".join((text or "").split())


def job_row(driver, name=JOB):
    return find(driver, f"table#jobs tr#job-{name}", f"overview {driver.current_url}")


def job_status(driver, name=JOB):
    cell = find(job_row(driver, name), "td.status", f"status cell of job {name}")
    return squash(cell.text)


def job_details(driver, name):
    """The `tr.detail` rows right after tr#job-NAME (its last error, its restore drill),
    in page order."""
    out, inside = [], False
    for row in find_all(driver, "table#jobs tr"):
        rid = row.get_attribute("id") or ""
        if rid.startswith("job-"):
            if inside:
                break
            inside = rid == f"job-{name}"
        elif inside and "detail" in (row.get_attribute("class") or "").split():
            out.append(row)
    return out


def entries(driver):
    """{data-path: (data-type, row)} of the entries table on a snapshot page."""
    find(driver, "table#entries", f"snapshot page {driver.current_url}")
    out = {}
    for row in find_all(driver, "table#entries tr.entry"):
        out[row.get_attribute("data-path")] = (row.get_attribute("data-type"), row)
    return out


def api_status(base):
    r = http("GET", f"{base}/api/v1/status")
    check(r.status == 200, f"GET /api/v1/status returned {r.status}")
    return r.json()


def api_jobs(base):
    """{name: job object} of /api/v1/status."""
    jobs = api_status(base).get("jobs")
    check(isinstance(jobs, list), "/api/v1/status has no `jobs` list")
    return {j.get("name"): j for j in jobs}


def api_job(base, name=JOB):
    j = api_jobs(base).get(name)
    if j is None:
        raise Failure(f"/api/v1/status lists no job {name!r}")
    return j


def parse_time(value):
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


# ---------------------------------------------------------------- the test


def write_saved_drill(state_dir, job):
    """Writes a passed restore drill of `job` where the daemon keeps the last one
    (`<state_dir>/drills/<job>.json`); returns it.

    Why: the drill gauges (backuphub_drill_last_status, backuphub_drill_duration_seconds,
    backuphub_drill_last_success_timestamp_seconds) and the overview's "restore drill
    passed" line come from the last drill result, which survives restarts in this file
    and is loaded when the daemon starts. A real drill restores into a throwaway
    PostgreSQL server, which this test does not have; the Rust tests (tests/pg_*.rs)
    run real drills. So the metric names the dashboard and alerts use can be checked
    in a live scrape, and the overview's drill line in a real browser."""
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    saved = {
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ok": True,
        "duration_seconds": 12.5,
        "snapshot": None,
        "restored_bytes": 1048576,
        "databases": [],
        "checks": [],
        "error": None,
    }
    (state_dir / "drills").mkdir(parents=True, exist_ok=True)
    (state_dir / "drills" / f"{job}.json").write_text(json.dumps(saved, indent=2) + "\n")
    return saved


def run(args, tmp, state):
    binary = Path(args.bin)
    if not binary.is_absolute():
        binary = REPO_ROOT / binary
    check(binary.is_file() and os.access(binary, os.X_OK),
          f"no executable {binary}: build it first (cargo build, or cargo test --all-targets)")

    step("setup")
    src = tmp / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    hello = b"hello from backuphub\n"
    data = os.urandom(200 * 1024)
    note = b"# a note\n\nthree levels down\n"
    (src / "hello.txt").write_bytes(hello)
    (src / "sub" / "data.bin").write_bytes(data)
    (src / "sub" / "deeper" / "note.md").write_bytes(note)
    token = secrets.token_hex(16)
    (tmp / "token").write_text(token + "\n")
    (tmp / "token").chmod(0o600)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    q = json.dumps  # a JSON string of a plain path is a valid TOML basic string
    config = tmp / "config.toml"
    config.write_text(f"""\
[repository]
path = {q(str(tmp / "repo"))}
create = true
state_dir = {q(str(tmp / "state"))}

[http]
listen = "127.0.0.1:{port}"
token_file = {q(str(tmp / "token"))}

# One attempt per run: the failing `pg` job fails at once instead of retrying with
# backoff.
[daemon]
attempts = 1

# Every 10 s, so that the prune metrics exist by the time /metrics is checked.
[prune]
schedule = "*/10 * * * * *"

[verify]
schedule = "0 0 0 1 1 *"
read_data_subset = "100%"

# Every job's schedule had a due time before now and no job has succeeded yet, so the
# daemon catches up on each at start (trigger "catch-up").
[jobs.{JOB}]
kind = "path"
schedule = "0 0 0 1 1 *"
paths = [{q(str(src))}]

[jobs.{SLOW}]
kind = "command"
schedule = "0 0 0 1 1 *"
command = ["sh", "-c", {q(f"sleep {SLOW_SECONDS}; cat {shlex.quote(str(src / 'hello.txt'))}")}]
name = "hello-again.txt"

# No server at this socket directory: every run fails. The drill's schedule is never
# due here; its last result is the saved one (write_saved_drill).
[jobs.{PG}]
kind = "postgres"
schedule = "0 0 0 1 1 *"
host = "/nonexistent-socket-dir"
user = "backup"

[jobs.{PG}.drill]
schedule = "0 0 0 1 1 *"
""")
    drill = write_saved_drill(tmp / "state", PG)
    drill_time = parse_time(drill["time"])
    downloads = tmp / "downloads"
    downloads.mkdir()
    ok(f"fixture {src}, config {config}, saved drill of {PG} at {drill['time']}, port {port}")

    state["daemon"] = daemon = Daemon(binary, config, tmp / "daemon.log")
    daemon.wait_ready(base)
    ok(f"daemon {binary} ready at {base}")

    step("catch-up runs at start")
    # One run per job at start (a due time passed and none has succeeded; a feature of
    # the daemon): wait until each is over.
    expected = {JOB: "complete", SLOW: "complete", PG: "failed"}
    seen = {}

    def caught_up():
        if daemon.proc.poll() is not None:
            raise Failure(f"the daemon exited with status {daemon.proc.poll()}")
        jobs = api_jobs(base)
        done = True
        for name, want in expected.items():
            if name not in jobs:
                raise Failure(f"/api/v1/status lists no job {name!r} (it lists {sorted(jobs)})")
            j = jobs[name]
            last = j.get("last_run") or {}
            seen[name] = "running" if j.get("running") else last.get("status", "never run")
            if j.get("running") or not last:
                done = False
                continue
            if last.get("status") != want:
                raise Failure(f"the catch-up run of {name} ended {last.get('status')!r}, expected "
                              f"{want!r} (error: {last.get('error')!r})")
        return jobs if done else None

    jobs = wait_for(caught_up, 60, lambda: f"catch-up runs over: {JOB} and {SLOW} complete, "
                                           f"{PG} failed (last seen: {seen})", interval=0.5)
    for name in expected:
        trigger = jobs[name]["last_run"].get("trigger")
        check(trigger == "catch-up", f"the first run of {name} has trigger {trigger!r}, expected 'catch-up'")
    pg_error = squash(jobs[PG]["last_run"].get("error"))
    check(pg_error, f"the failed run of {PG} has no error in /api/v1/status: {jobs[PG]['last_run']}")
    ok(f"catch-up runs (trigger 'catch-up'): {JOB} complete, {SLOW} complete, {PG} failed: {pg_error[:160]}")
    api_drill = jobs[PG].get("drill")
    check(isinstance(api_drill, dict) and api_drill.get("ok") is True
          and api_drill.get("duration_seconds") == drill["duration_seconds"]
          and api_drill.get("restored_bytes") == drill["restored_bytes"]
          and api_drill.get("time") is not None and parse_time(api_drill["time"]) == drill_time,
          f"/api/v1/status `drill` of {PG} is {api_drill!r}, expected the saved {drill!r}")
    ok(f"/api/v1/status has the saved drill of {PG} (ok, {drill['duration_seconds']} s)")

    state["driver"] = driver = make_driver(downloads)
    ok(f"headless chromium {driver.capabilities.get('browserVersion')} via {shutil.which('chromedriver')}")

    # ---------------------------------------------------------------- 1
    step("1. overview without login")
    driver.get(f"{base}/")
    check(path_of(driver) == "/", f"GET / ended at {driver.current_url}")
    find(driver, "table#jobs", "overview")
    for name, want in expected.items():
        status = job_status(driver, name)
        check(status == want, f"status of job {name} on the overview is {status!r}, expected {want!r}")
    ok("table#jobs: " + ", ".join(f"tr#job-{n} {w}" for n, w in expected.items()))
    details = [squash(r.text) for r in job_details(driver, PG)]
    check(any(d.startswith("last error:") and pg_error in d for d in details),
          f"no 'last error: {pg_error}' row after tr#job-{PG} (detail rows: {details}; "
          f"rows' textContent: {[squash(r.get_attribute('textContent')) for r in job_details(driver, PG)]})")
    ok(f"tr#job-{PG} is followed by its last error, visible: 'last error: {pg_error[:80]}...'")
    drill_text = f"restore drill passed {drill_time:%Y-%m-%d %H:%M} UTC"
    check(drill_text in details,
          f"no {drill_text!r} row after tr#job-{PG} (detail rows: {details})")
    check("restore drill passed" in squash(find(driver, "body", "overview").text),
          "'restore drill passed' is not visible on the overview")
    ok(f"tr#job-{PG} is followed by {drill_text!r}")
    links = [a for a in find_all(job_row(driver), "a") if same_path(dom_attr(a, "href"), f"/jobs/{JOB}")]
    check(links, f"the job's name does not link to /jobs/{JOB}")
    ok(f"job name links to /jobs/{JOB}")
    find(driver, "section#repository", "overview")
    find(driver, "section#verify", "overview")
    ok("sections #repository and #verify present")
    check(not find_all(driver, "form.run-now"), "a 'Run now' form is shown without login")
    check(not find_all(driver, "form#logout"), "a logout form is shown without login")
    ok("no run-now or logout form without login")
    login = find(driver, "a#login", "overview without login")
    check(same_path(dom_attr(login, "href"), "/login"), f"a#login links to {dom_attr(login, 'href')!r}")
    ok("a#login links to /login")
    screenshot(driver, "web-ui-overview.png")

    # ---------------------------------------------------------------- 2
    step("2. a snapshot page without a session")
    r = http("GET", f"{base}/snapshots/0000")
    loc = location_path(r)
    check(r.status == 303 and loc.path == "/login" and "next=" in loc.query,
          f"GET /snapshots/0000 without session: {r.status} Location {r.header('Location')!r}, "
          "expected 303 to /login?next=...")
    ok(f"plain GET: 303 to {r.header('Location')}")
    driver.get(f"{base}/snapshots/0000")
    check(path_of(driver) == "/login", f"the browser ended at {driver.current_url}, not at /login")
    find(driver, "form#login-form", "login page")
    ok(f"the browser lands on the login page ({driver.current_url})")

    # ---------------------------------------------------------------- 3
    step("3. login")
    form = find(driver, "form#login-form", "login page")
    check((dom_attr(form, "method") or "").lower() == "post", "the login form's method is not post")
    check(same_path(dom_attr(form, "action"), "/login"), f"the login form posts to {dom_attr(form, 'action')!r}")
    field = find(form, "input#token", "login form")
    check(dom_attr(field, "type") == "password" and dom_attr(field, "name") == "token",
          "input#token is not type=password name=token")
    find(form, "button[type=submit]", "login form")
    ok("form#login-form posts to /login with a password field `token` and a submit button")

    wrong = secrets.token_hex(16)
    field.send_keys(wrong)
    click(driver, find(form, "button[type=submit]", "login form"), "the login button")
    wait_for(lambda: "wrong token" in driver.page_source.lower(), 10, "'wrong token' shown after a wrong token")
    check(not any(c["name"] == SESSION_COOKIE for c in driver.get_cookies()), "a wrong token set a session cookie")
    ok("a wrong token: the page says 'wrong token', no session cookie")

    fields = form_fields(http("GET", f"{base}/login").text(), "login-form")
    r = http("POST", f"{base}/login", form_body({**fields, "token": wrong}), FORM_CT)
    check(r.status == 401 and "wrong token" in r.text().lower(),
          f"POST /login with a wrong token: {r.status}, expected 401 with 'wrong token'")
    check(not any(SESSION_COOKIE in c for c in r.header_all("Set-Cookie")),
          "POST /login with a wrong token set a session cookie")
    ok("plain POST with a wrong token: 401, no cookie")
    r = http("POST", f"{base}/login", form_body({**fields, "token": token}), FORM_CT)
    check(r.status == 303 and location_path(r).path == "/",
          f"POST /login with the right token: {r.status} Location {r.header('Location')!r}, expected 303 to /")
    set_cookie = [c for c in r.header_all("Set-Cookie") if c.startswith(f"{SESSION_COOKIE}=")]
    check(set_cookie, f"POST /login with the right token set no {SESSION_COOKIE} cookie")
    attrs = {a.strip().lower() for a in set_cookie[0].split(";")[1:]}
    check("httponly" in attrs and "samesite=strict" in attrs,
          f"session cookie lacks HttpOnly or SameSite=Strict: {set_cookie[0].split(';', 1)[1]!r}")
    ok("plain POST with the right token: 303 to /, Set-Cookie with HttpOnly; SameSite=Strict")

    driver.get(f"{base}/login")
    field = find(driver, "form#login-form input#token", "login page")
    field.send_keys(token)
    click(driver, find(driver, "form#login-form button[type=submit]", "login page"), "the login button")
    wait_for(lambda: path_of(driver) == "/", 10, f"back at / after login (at {driver.current_url})")
    ok("the right token: back at /")
    cookies = [c for c in driver.get_cookies() if c["name"] == SESSION_COOKIE]
    check(cookies, f"no {SESSION_COOKIE} cookie in the browser after login")
    cookie = cookies[0]
    check(cookie.get("httpOnly") is True, f"session cookie is not HttpOnly: {cookie}")
    check(cookie.get("sameSite") == "Strict", f"session cookie SameSite is {cookie.get('sameSite')!r}, not Strict")
    ok("session cookie: httpOnly True, sameSite Strict")
    js_cookies = driver.execute_script("return document.cookie;")
    check(SESSION_COOKIE not in js_cookies, f"document.cookie shows the session: {js_cookies!r}")
    ok("document.cookie does not contain the session")
    session = cookie["value"]
    check(token not in session, "the session cookie contains the token itself")

    buttons, csrfs = {}, set()
    for name in expected:
        run_form = find(job_row(driver, name), "form.run-now", f"row of job {name} after login")
        check((dom_attr(run_form, "method") or "").lower() == "post",
              f"the run-now form of {name} has method {dom_attr(run_form, 'method')!r}, not post")
        check(same_path(dom_attr(run_form, "action"), f"/jobs/{name}/run"),
              f"the run-now form of {name} posts to {dom_attr(run_form, 'action')!r}")
        csrf_input = find(run_form, "input[name=csrf]", f"run-now form of {name}")
        check(dom_attr(csrf_input, "type") == "hidden", f"the csrf input of {name}'s form is not hidden")
        csrf = csrf_input.get_attribute("value") or ""
        check(len(csrf) >= 16, f"the csrf value {csrf!r} of {name}'s form is empty or short")
        csrfs.add(csrf)
        buttons[name] = find(run_form, "button[type=submit]", f"run-now form of {name}")
        check(buttons[name].text.strip() == "Run now", f"the run-now button of {name} says {buttons[name].text!r}")
        ok(f"tr#job-{name} has form.run-now (post /jobs/{name}/run, hidden csrf, 'Run now')")
    check(len(csrfs) == 1, f"the run-now forms carry different csrf values: {csrfs}")
    csrf = csrfs.pop()
    logout = find(driver, "form#logout", "overview after login")
    check((dom_attr(logout, "method") or "").lower() == "post" and same_path(dom_attr(logout, "action"), "/logout"),
          "form#logout does not post to /logout")
    ok("form#logout posts to /logout")
    screenshot(driver, "web-ui-overview-logged-in.png")

    # ---------------------------------------------------------------- 4
    step(f"4. Run now on {SLOW}")
    before_run = api_job(base, SLOW).get("last_run") or {}
    check(before_run.get("run_id"), f"the catch-up run of {SLOW} has no run_id: {before_run}")
    click(driver, buttons[SLOW], f"the 'Run now' button of {SLOW}")

    def triggered():
        j = api_job(base, SLOW)
        return j.get("running") or (j.get("last_run") or {}).get("run_id") != before_run["run_id"]

    wait_for(triggered, 10, f"{SLOW} running or run anew (in /api/v1/status) after 'Run now'")
    wait_for(lambda: path_of(driver) == "/" and find_all(driver, f"table#jobs tr#job-{SLOW}"), 10,
             f"back at / after 'Run now' (at {driver.current_url})")
    ok(f"clicked 'Run now' on {SLOW}: the run started, the browser is back at /")
    # The run takes over SLOW_SECONDS: reloading the overview must show it running, then
    # complete.
    seen = []
    deadline = time.monotonic() + 60
    while True:
        status = job_status(driver, SLOW)
        if not seen or seen[-1] != status:
            seen.append(status)
        check(status in STATUSES, f"unknown status text {status!r} of {SLOW}")
        check(status not in ("failed", "partial", "never run"),
              f"{SLOW} shows {status!r} after 'Run now' (seen: {seen}); "
              f"/api/v1/status: {api_job(base, SLOW).get('last_run')}")
        if status == "complete" and "running" in seen:
            break
        check(status != "complete" or "running" in seen,
              f"the overview showed {SLOW} 'complete' without first showing it 'running' "
              f"(seen: {seen}), though its run takes over {SLOW_SECONDS} s")
        check(time.monotonic() < deadline, f"{SLOW} not 'complete' within 60 s of 'Run now' (seen: {seen})")
        time.sleep(0.3)
        driver.get(f"{base}/")
    ok(f"the overview showed {SLOW} {' -> '.join(seen)}")
    last_run = api_job(base, SLOW).get("last_run") or {}
    check(last_run.get("status") == "complete", f"/api/v1/status: last_run of {SLOW} is {last_run}")
    check(last_run.get("run_id") and last_run.get("run_id") != before_run["run_id"],
          f"last_run.run_id of {SLOW} is {last_run.get('run_id')!r}, the catch-up run's was "
          f"{before_run['run_id']!r}: not a new run")
    check(last_run.get("trigger") == "web", f"last_run.trigger of {SLOW} is {last_run.get('trigger')!r}, not 'web'")
    check(last_run.get("snapshot"), f"the web run of {SLOW} has no snapshot: {last_run}")
    took = (parse_time(last_run["end"]) - parse_time(last_run["start"])).total_seconds()
    check(took >= SLOW_SECONDS, f"the web run of {SLOW} took {took:.2f} s, less than its sleep {SLOW_SECONDS} s")
    ok(f"/api/v1/status: a new run {last_run['run_id']} (was {before_run['run_id']}), trigger web, "
       f"complete, {took:.1f} s, snapshot {last_run['snapshot'][:12]}...")

    # ---------------------------------------------------------------- 5
    step("5. browse the snapshot and download")
    links = [a for a in find_all(job_row(driver), "a") if same_path(dom_attr(a, "href"), f"/jobs/{JOB}")]
    check(links, f"the job's name does not link to /jobs/{JOB}")
    click(driver, links[0], "the job's link")
    wait_for(lambda: path_of(driver) == f"/jobs/{JOB}", 10, f"at /jobs/{JOB} (at {driver.current_url})")
    find(driver, "table#runs", "job page")
    snap_links = find_all(driver, "table#snapshots a.snapshot")
    check(snap_links, "the job page lists no snapshot link (table#snapshots a.snapshot)")
    href = dom_attr(snap_links[0], "href") or ""
    m = re.fullmatch(r"/snapshots/([0-9a-f]{64})", urllib.parse.urlsplit(href).path)
    check(m, f"snapshot link {href!r} is not /snapshots/<64 hex digits>")
    snap = m.group(1)
    r = http("GET", f"{base}/api/v1/jobs/{JOB}/snapshots")
    check(r.status == 200 and snap in [s.get("id") for s in r.json()],
          f"snapshot {snap} is not in /api/v1/jobs/{JOB}/snapshots ({r.status})")
    ok(f"job page: table#runs, table#snapshots linking {snap[:12]}..., an id the JSON API lists")
    r = http("GET", f"{base}/snapshots/{snap}")
    check(r.status == 303 and location_path(r).path == "/login",
          f"GET /snapshots/{snap[:12]}... without session: {r.status} {r.header('Location')!r}")
    ok("the snapshot page without a session: 303 to /login")
    click(driver, snap_links[0], "the snapshot link")
    wait_for(lambda: path_of(driver) == f"/snapshots/{snap}", 10, f"at the snapshot page (at {driver.current_url})")

    # From the root down, only through browse links, to the directory ending in /src.
    expected = str(src).lstrip("/")
    src_path = None
    for _ in range(40):
        es = entries(driver)
        target = [p for p, (t, _) in es.items() if t == "dir" and (p == "src" or p.endswith("/src"))]
        if target:
            src_path = target[0]
        else:
            ancestors = [p for p, (t, _) in es.items() if t == "dir" and expected.startswith(p + "/")]
            check(ancestors, f"at {driver.current_url}: no directory leads to {expected} "
                             f"(entries: {sorted(es)})")
            target = ancestors
        row = es[target[0]][1]
        browse = find(row, "a.browse", f"directory row {target[0]}")
        bhref = urllib.parse.urlsplit(dom_attr(browse, "href") or "")
        check(bhref.path == f"/snapshots/{snap}" and urllib.parse.parse_qs(bhref.query).get("path") == [target[0]],
              f"browse link of {target[0]} is {dom_attr(browse, 'href')!r}")
        click(driver, browse, f"the browse link of {target[0]}")
        wait_for(lambda: urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query).get("path")
                 == [target[0]], 10, f"at the listing of {target[0]}")
        if src_path:
            break
    check(src_path, f"walked 40 levels without reaching a directory ending in /src")
    ok(f"walked browse links down to {src_path}" +
       ("" if src_path == expected else f" (fixture is at {src}; stored path differs)"))

    es = entries(driver)
    outside = [p for p in es if not p.startswith(src_path + "/")]
    check(not outside, f"entries outside {src_path}: {outside}")
    hello_path, sub_path = f"{src_path}/hello.txt", f"{src_path}/sub"
    check(hello_path in es and es[hello_path][0] == "file",
          f"no file entry {hello_path} (entries: {[(p, t) for p, (t, _) in es.items()]})")
    check(sub_path in es and es[sub_path][0] == "dir",
          f"no dir entry {sub_path} (entries: {[(p, t) for p, (t, _) in es.items()]})")
    ok("listing has hello.txt (file) and sub (dir)")

    dl = find(es[hello_path][1], "a.download", "hello.txt row")
    dhref = urllib.parse.urlsplit(dom_attr(dl, "href") or "")
    check(dhref.path == f"/snapshots/{snap}/file" and urllib.parse.parse_qs(dhref.query).get("path") == [hello_path],
          f"download link of hello.txt is {dom_attr(dl, 'href')!r}")
    click(driver, dl, "the download link of hello.txt")
    saved = downloads / "hello.txt"
    wait_for(lambda: saved.exists() and not list(downloads.glob("*.crdownload")), 30,
             f"hello.txt in the download directory (has: {os.listdir(downloads)})")
    check(saved.read_bytes() == hello, f"downloaded hello.txt differs: {saved.read_bytes()[:80]!r}")
    ok("the browser downloaded hello.txt under its name, bytes identical")
    file_url = urllib.parse.urljoin(driver.current_url, dom_attr(dl, "href"))
    r = http("GET", file_url, headers=cookie_header(session))
    cd = r.header("Content-Disposition") or ""
    check(r.status == 200 and r.body == hello, f"GET {file_url} with the cookie: {r.status}, {len(r.body)} bytes")
    check("attachment" in cd and 'filename="hello.txt"' in cd, f"Content-Disposition is {cd!r}")
    ok(f'Content-Disposition: {cd}')
    r = http("GET", file_url)
    check(not 200 <= r.status < 300, f"GET {file_url} without a session returned {r.status}")
    ok(f"the file without a session: {r.status}")

    tar_link = find(es[sub_path][1], "a.download-tar", "sub row")
    thref = urllib.parse.urlsplit(dom_attr(tar_link, "href") or "")
    check(thref.path == f"/snapshots/{snap}/tar" and urllib.parse.parse_qs(thref.query).get("path") == [sub_path],
          f"tar link of sub is {dom_attr(tar_link, 'href')!r}")
    tar_url = urllib.parse.urljoin(driver.current_url, dom_attr(tar_link, "href"))
    r = http("GET", tar_url)
    check(not 200 <= r.status < 300, f"GET {tar_url} without a session returned {r.status}")
    r = http("GET", tar_url, headers=cookie_header(session), timeout=60)
    check(r.status == 200, f"GET {tar_url} with the cookie: {r.status} {r.text()[:200]!r}")
    try:
        tf = tarfile.open(fileobj=io.BytesIO(r.body), mode="r:")  # r: = uncompressed only
    except tarfile.TarError as e:
        raise Failure(f"the tar of sub is not an uncompressed tar: {e} ({len(r.body)} bytes, starts {r.body[:16]!r})")
    members = {re.sub(r"^(\./)+", "", m.name).lstrip("/"): m for m in tf.getmembers()}

    def member(suffix):
        hits = [m for n, m in members.items() if n == suffix or n.endswith("/" + suffix)]
        check(len(hits) == 1, f"tar of sub: {len(hits)} members named */{suffix} (members: {sorted(members)})")
        check(hits[0].isfile(), f"tar member {hits[0].name} is not a regular file")
        return tf.extractfile(hits[0]).read()

    check(member("data.bin") == data, "data.bin in the tar differs from the source")
    check(member("deeper/note.md") == note, "deeper/note.md in the tar differs from the source")
    ok(f"tar of sub ({len(r.body)} bytes, uncompressed): data.bin and deeper/note.md identical "
       f"(members: {sorted(members)})")

    click(driver, find(es[sub_path][1], "a.browse", "sub row"), "the browse link of sub")
    wait_for(lambda: urllib.parse.parse_qs(urllib.parse.urlsplit(driver.current_url).query).get("path")
             == [sub_path], 10, "at the listing of sub")
    es = entries(driver)
    data_path = f"{sub_path}/data.bin"
    check(data_path in es and es[data_path][0] == "file", f"no file entry {data_path} (entries: {sorted(es)})")
    check(es.get(f"{sub_path}/deeper", ("",))[0] == "dir", f"no dir entry {sub_path}/deeper (entries: {sorted(es)})")
    dl = find(es[data_path][1], "a.download", "data.bin row")
    data_url = urllib.parse.urljoin(driver.current_url, dom_attr(dl, "href"))
    r = http("GET", data_url, headers=cookie_header(session), timeout=60)
    check(r.status == 200, f"GET {data_url} with the cookie: {r.status}")
    check(r.body == data, f"data.bin: got {len(r.body)} bytes, differ from the 200 KiB source")
    ok("sub listing: data.bin (file), deeper (dir); data.bin fetched with the session cookie, 200 KiB identical")

    # ---------------------------------------------------------------- 6
    step("6. CSRF")
    before = api_job(base).get("last_run")
    run_url = f"{base}/jobs/{JOB}/run"
    r = http("POST", run_url, b"", {**FORM_CT, **cookie_header(session)})
    check(r.status == 403, f"POST /jobs/{JOB}/run with the session, without csrf: {r.status}, expected 403")
    ok("with the session, without csrf: 403")
    r = http("POST", run_url, form_body({"csrf": secrets.token_hex(16)}), {**FORM_CT, **cookie_header(session)})
    check(r.status == 403, f"POST /jobs/{JOB}/run with a wrong csrf: {r.status}, expected 403")
    ok("with the session, with a wrong csrf: 403")
    r = http("POST", run_url, form_body({"csrf": csrf}), FORM_CT)
    check(not 200 <= r.status < 300, f"POST /jobs/{JOB}/run without a session: {r.status}")
    if r.status in (301, 302, 303, 307, 308):
        check(location_path(r).path == "/login", f"without a session: redirect to {r.header('Location')!r}")
    ok(f"without a session (valid csrf value): {r.status} {r.header('Location') or ''}".rstrip())
    time.sleep(1)
    job = api_job(base)
    check(not job.get("running") and job.get("last_run") == before,
          f"a refused POST started a run: running {job.get('running')}, last_run {job.get('last_run')}")
    ok("no refused request started a run")

    # ---------------------------------------------------------------- 7
    step("7. verification and metrics")
    verify = api_status(base).get("verify")
    check(isinstance(verify, dict), f"/api/v1/status `verify` is {verify!r}, expected an object")
    previous = verify.get("last")
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    r = http("POST", f"{base}/api/v1/verify/run", b"", {"Authorization": f"Bearer {token}"})
    check(r.status == 202, f"POST /api/v1/verify/run with the bearer token: {r.status} {r.text()[:200]!r}")
    ok("POST /api/v1/verify/run: 202")

    def finished():
        last = (api_status(base).get("verify") or {}).get("last")
        if isinstance(last, dict) and last != previous and "time" in last and parse_time(last["time"]) > started:
            return last
        return None

    last = wait_for(finished, 60, "verify.last with a time after the request", interval=0.5)
    fields = {"time", "ok", "duration_seconds", "read_data_subset", "packs", "packs_read", "bytes_read",
              "snapshots", "damaged_chunks", "contents_verified", "cycle_ratio", "cycle_completed",
              "problems", "damaged_files", "notes", "error"}
    check(fields <= set(last), f"verify.last lacks {sorted(fields - set(last))}: {json.dumps(last)[:1500]}")
    check(last.get("ok") is True and last.get("error") is None,
          f"verification not ok: {json.dumps(last)[:1500]}")
    check(last.get("damaged_chunks") == 0 and last.get("problems") == [] and last.get("damaged_files") == [],
          f"verification found damage: {json.dumps(last)[:1500]}")
    check(last.get("read_data_subset") == "100%", f"verify.last.read_data_subset is {last.get('read_data_subset')!r}")
    check(last.get("contents_verified") is True,
          f"verify.last.contents_verified is {last.get('contents_verified')!r} for an unencrypted repository")
    check(last.get("packs", 0) > 0 and last.get("packs_read") == last.get("packs") and last.get("cycle_completed") is True,
          f"reading 100% did not read every pack in one cycle: {json.dumps(last)[:1500]}")
    check(last.get("snapshots", 0) >= 1, f"verify.last.snapshots is {last.get('snapshots')!r}")
    ok(f"verify.last: ok, 0 damaged chunks, {last.get('packs_read')} of {last.get('packs')} packs / "
       f"{last.get('bytes_read')} bytes read, {last.get('snapshots')} snapshots, contents verified, cycle completed")
    driver.get(f"{base}/")
    section = squash(find(driver, "section#verify", "overview").text)
    check("no damage" in section and "DAMAGE FOUND" not in section and "could not run" not in section,
          f"section#verify on the overview does not say 'no damage': {section!r}")
    ok(f"section#verify on the overview: {section[:160]!r}")

    def pruned():
        prune = api_status(base).get("prune") or {}
        return prune if prune.get("last_success") else None

    try:
        prune = wait_for(pruned, 40, "a prune (prune.last_success in /api/v1/status; the schedule is every 10 s)",
                         interval=0.5)
        check(prune.get("error") is None, f"/api/v1/status prune.error is {prune.get('error')!r}")
        ok(f"prune.last_success {prune['last_success']}")
    except Failure as e:
        if args.require_all_metrics:
            raise
        warn(f"{e} (the prune metrics will be missing; tolerated by --no-require-all-metrics)")

    r = http("GET", f"{base}/metrics")
    check(r.status == 200, f"GET /metrics: {r.status}")
    scrape = r.text()

    def sample(name, job):
        """The value of NAME{job="JOB"} in the scrape, or None."""
        m = re.search(rf'^{name}\{{[^}}]*job="{job}"[^}}]*\}} (\S+)$', scrape, re.M)
        return float(m.group(1)) if m else None

    for name, want in ((JOB, 1), (SLOW, 1), (PG, 0)):
        got = sample("backuphub_job_last_run_status", name)
        check(got == want, f'/metrics: backuphub_job_last_run_status{{job="{name}"}} is {got}, expected {want}')
    ok(f'/metrics: backuphub_job_last_run_status {JOB} 1, {SLOW} 1, {PG} 0')
    drill_metrics = {
        "backuphub_drill_last_status": 1,
        "backuphub_drill_duration_seconds": drill["duration_seconds"],
        "backuphub_drill_last_success_timestamp_seconds": drill_time.timestamp(),
    }
    absent = []
    for name, want in drill_metrics.items():
        got = sample(name, PG)
        if got is None and not args.require_all_metrics:
            absent.append(name)
            continue
        check(got == want, f'/metrics: {name}{{job="{PG}"}} is {got}, expected {want} (from the saved drill)')
    if absent:
        warn(f"/metrics lacks {', '.join(absent)} for {PG} (tolerated by --no-require-all-metrics)")
    else:
        ok(f"/metrics: the saved drill of {PG}: " + ", ".join(f"{n} {v:.12g}" for n, v in drill_metrics.items()))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    metrics_file = ARTIFACTS / "metrics.txt"
    metrics_file.write_text(scrape)
    rel = metrics_file.relative_to(REPO_ROOT)
    p = subprocess.run(["bash", "tests/monitoring/check.sh", str(rel)], cwd=REPO_ROOT,
                       capture_output=True, text=True)
    if p.returncode == 0:
        ok(f"bash tests/monitoring/check.sh {rel}: OK")
    else:
        missing = re.findall(r"^\s+(backuphub_\w+|up)\s*$", p.stderr, re.M) \
            if "are not in" in p.stderr else []
        report = f"check.sh {rel} failed (status {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        optional_only = missing and all(n.startswith(OPTIONAL_METRIC_PREFIXES) for n in missing)
        if optional_only and not args.require_all_metrics:
            warn(f"check.sh: {len(missing)} metric name(s) missing, all of which come from a prune "
                 f"or a drill result, tolerated by --no-require-all-metrics: {', '.join(missing)}")
        else:
            if missing:
                report += f"\nmissing metric names: {', '.join(missing)}"
                if optional_only:
                    report += ("\n(all of them come from a prune or a drill result, which this setup "
                               "has: a prune every 10 s, a saved drill of pg; "
                               "--no-require-all-metrics would only warn)")
            raise Failure(report)

    # ---------------------------------------------------------------- 8
    step("8. logout")
    driver.get(f"{base}/")
    click(driver, find(driver, "form#logout button, form#logout input[type=submit]", "logout form"),
          "the logout button")
    wait_for(lambda: find_all(driver, "a#login"), 10, f"a login link after logout (at {driver.current_url})")
    check(not find_all(driver, "form.run-now"), "'Run now' still shown after logout")
    check(not any(c["name"] == SESSION_COOKIE for c in driver.get_cookies()), "session cookie kept after logout")
    ok("after logout: login link, no run-now form, no session cookie")
    r = http("GET", f"{base}/snapshots/{snap}", headers=cookie_header(session))
    if r.status == 200:
        warn("the old session cookie still opens a snapshot page after logout (session not ended on the server)")
    else:
        ok(f"the old session cookie no longer works: {r.status}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/debug/backuphub",
                    help="the backuphub binary (relative paths are from the repository root)")
    ap.add_argument("--require-all-metrics", action=argparse.BooleanOptionalAction, default=True,
                    help="fail when /metrics lacks any name the dashboard/alerts use, the "
                         "backuphub_drill_*/backuphub_prune_* ones included (this setup runs a "
                         "prune every 10 s and saves a drill result, so the daemon can export "
                         "them all; default: on; --no-require-all-metrics only warns about those)")
    args = ap.parse_args()

    state = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="backuphub-webui-") as t:
        try:
            run(args, Path(t), state)
        except Exception as e:  # noqa: BLE001 - every failure gets the same report
            failed = True
            if isinstance(e, Failure):
                msg = str(e)
            else:
                msg = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            driver = state.get("driver")
            if driver is not None:
                try:
                    print(f"browser at: {driver.current_url}", file=sys.stderr)
                    ARTIFACTS.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(ARTIFACTS / "web-ui-failure.png"))
                    (ARTIFACTS / "web-ui-failure.html").write_text(driver.page_source)
                    print(f"saved {ARTIFACTS}/web-ui-failure.png and .html", file=sys.stderr)
                except Exception as e2:  # noqa: BLE001
                    print(f"(could not save the failing page: {e2})", file=sys.stderr)
            if state.get("daemon") is not None:
                print("---- daemon log (last 200 lines) ----", file=sys.stderr)
                print(state["daemon"].log_tail(), file=sys.stderr)
                print("---- end of daemon log ----", file=sys.stderr)
            print(f"\nFAIL: {msg}", file=sys.stderr)
        finally:
            if state.get("driver") is not None:
                try:
                    state["driver"].quit()
                except Exception:  # noqa: BLE001
                    pass
            if state.get("daemon") is not None:
                state["daemon"].stop()
    if failed:
        sys.exit(1)
    print(f"\nPASS: web UI end to end, {CHECKS} checks")


if __name__ == "__main__":
    main()
