"""A small harness to drive notebooks in a real JupyterLab with headless Chromium (Playwright).

Typical use in a test (see test_harness_smoke.py)::

    from .jupyter import lab_page, run_all, drag, screenshot   # from a test in tests/browser/

    def test_panel(tmp_path):
        with lab_page(tmp_path, [NOTEBOOK]) as (server, page):   # server + browser + watchdog
            run_all(page)                                         # Run All, wait until every cell ran
            page.wait_for_selector("canvas.my-panel")
            drag(page, "canvas.my-panel", [(10, 10), (50, 60)])   # canvas pixel coordinates
            screenshot(page, "my_panel")                          # artifacts/browser/my_panel.png

Everything the harness starts (the server, its kernels, the browser) is stopped when the ``with`` block
ends, and a watchdog kills it all if the block outlives its time limit. Waits are bounded and wait on
the DOM or the server's API, never on fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

try:
    import psutil
except ImportError:  # only used to find and stop leftovers; the harness works without it
    psutil = None

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
SERVER_CONFIG = HERE / "jupyter_server_config.py"

# Flags that work with Debian's Chromium on a closed network (see shared/BROWSER_TESTING.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# JupyterLab user settings for deterministic tests: every cell stays in the DOM (no windowing that
# detaches off-screen cells and their widgets), and no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list:
    if psutil is None:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_processes(procs: Iterable) -> None:
    """SIGKILL the given psutil processes (ones this harness started), ignoring those already gone."""
    procs = list(procs)
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    if procs and psutil is not None:
        psutil.wait_procs(procs, timeout=5)


class Watchdog:
    """Runs its kill callbacks if not stopped within ``seconds``: nothing a test started outlives it.

    Callbacks run on the watchdog's thread, so they must be thread-safe process kills, not Playwright
    calls. Once the server is killed, every bounded wait in the test fails, and the ``with`` blocks
    unwind and close the browser.
    """

    def __init__(self, seconds: float, name: str = "browser test"):
        self.seconds = seconds
        self.name = name
        self.fired = False
        self._callbacks: list[Callable[[], None]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watchdog:{name}", daemon=True)

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _run(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.fired = True
        print(f"\nwatchdog: {self.name} ran past {self.seconds:.0f} s; killing what it started", file=sys.stderr)
        for callback in reversed(self._callbacks):
            with contextlib.suppress(Exception):
                callback()

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join(timeout=30)


class JupyterLabServer:
    """JupyterLab on 127.0.0.1 with a free port, a random token, and all its state in ``workdir``.

    ``notebooks`` (paths) are copied into ``workdir/root``, the server's root dir; the kernel is the
    ``python3`` kernel of this venv (the server runs with ``sys.executable``), so it imports the
    editable-installed ``zfwidgets``. ``nodelay`` installs jupyter_server_config.py (TCP_NODELAY on
    kernel websockets).
    """

    def __init__(
        self,
        workdir: os.PathLike | str,
        notebooks: Sequence[os.PathLike | str] = (),
        *,
        startup_timeout: float = 120.0,
        nodelay: bool = True,
        extra_args: Sequence[str] = (),
    ):
        self.workdir = Path(workdir)
        self.root = self.workdir / "root"
        self.notebooks = [Path(n) for n in notebooks]
        self.startup_timeout = startup_timeout
        self.nodelay = nodelay
        self.extra_args = list(extra_args)
        self.token = secrets.token_hex(24)
        self.port: int | None = None
        self.pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "jupyterlab.log"
        self._log = None
        self._stopped = False

    # -- addresses -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lab_url(self, path: str = "") -> str:
        tree = f"/tree/{path}" if path else ""
        return f"{self.base_url}/lab{tree}?token={self.token}"

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
        """Call the server's REST API with the token; returns the decoded JSON (or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    # -- life cycle ------------------------------------------------------------------------------
    def _prepare_dirs(self) -> dict:
        for sub in ("root", "config", "data", "runtime", "ipython", "lab-settings", "lab-workspaces"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        for nb in self.notebooks:
            shutil.copy2(nb, self.root / nb.name)
        if self.nodelay:
            shutil.copy2(SERVER_CONFIG, self.workdir / "config" / "jupyter_server_config.py")
        # jupyter_lsp scans for language servers at start-up; the tests need none.
        (self.workdir / "config" / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_lsp": False}}}))
        for plugin, settings in LAB_SETTINGS.items():
            path = self.workdir / "lab-settings" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings))
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.workdir / "config"),
            JUPYTER_DATA_DIR=str(self.workdir / "data"),
            JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(self.workdir / "lab-settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self.workdir / "lab-workspaces"),
            IPYTHONDIR=str(self.workdir / "ipython"),
            PYTHONUNBUFFERED="1",
        )
        # Kernelspecs are found in JUPYTER_DATA_DIR, then sys.prefix/share/jupyter (this venv's python3).
        env.pop("JUPYTER_PATH", None)
        return env

    def command(self) -> list[str]:
        """The server's command line (``self.port`` is set)."""
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.open_browser=False",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.news_url=None",
            "--LabApp.extension_manager=readonly",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *self.extra_args,
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        return cmd

    def start(self) -> "JupyterLabServer":
        env = self._prepare_dirs()
        self.port = free_port()
        cmd = self.command()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pid = self.proc.pid
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def probe(self) -> None:
        """Returns once the server answers (raises a URLError/OSError before)."""
        self.api("GET", "/api/status", timeout=2)

    def request_shutdown(self) -> None:
        """Ask the server to shut down (bounded); ``stop`` kills what is left after that."""
        self.api("POST", "/api/shutdown", timeout=5)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{type(self).__name__} exited with {self.proc.returncode} before it was ready:\n{self.log_tail()}")
            try:
                self.probe()
                return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{type(self).__name__} not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """Kill the server's process group and its kernels (new sessions of their own). Thread-safe."""
        if self.pid is None:
            return
        kids = _descendants(self.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        _kill_processes(kids)

    def stop(self) -> None:
        """Shut down through the API, then kill what is left of the server and its kernels."""
        if self._stopped or self.proc is None:
            return
        self._stopped = True
        kids = _descendants(self.pid)  # kernels run in sessions of their own: note them before
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.request_shutdown()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        _kill_processes(k for k in kids if k.is_running())
        if self._log:
            self._log.close()

    def __enter__(self) -> "JupyterLabServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VoilaServer(JupyterLabServer):
    """Voilà serving one notebook as an app, like :class:`JupyterLabServer` (127.0.0.1, a free port, a random
    token, all state in ``workdir``, the same stop/kill). Voilà runs the notebook when the page loads.

    Voilà rejects ``--allow-root`` and ``--ip`` (``--Voila.ip`` works). It does not read
    jupyter_server_config.py: ``nodelay`` writes the same TCP_NODELAY websocket connection class into a
    ``voila.py`` in its config dir.
    """

    def __init__(self, workdir: os.PathLike | str, notebook: os.PathLike | str, **kwargs):
        super().__init__(workdir, [notebook], **kwargs)
        self.log_path = self.workdir / "voila.log"

    @property
    def notebook_name(self) -> str:
        return self.notebooks[0].name

    def app_url(self) -> str:
        return f"{self.base_url}/?token={self.token}"

    def _prepare_dirs(self) -> dict:
        env = super()._prepare_dirs()
        if self.nodelay:
            text = SERVER_CONFIG.read_text().replace(
                "c.ServerApp.kernel_websocket_connection_class", "c.Voila.kernel_websocket_connection_class")
            assert "c.Voila.kernel_websocket_connection_class" in text, "jupyter_server_config.py changed"
            (self.workdir / "config" / "voila.py").write_text(text)
        return env

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "voila", str(self.root / self.notebook_name),
            "--Voila.ip=127.0.0.1",
            f"--Voila.port={self.port}",
            "--Voila.port_retries=0",
            "--Voila.open_browser=False",
            f"--Voila.token={self.token}",
            "--VoilaConfiguration.show_tracebacks=True",
            *self.extra_args,
        ]

    def probe(self) -> None:
        """Any HTTP answer means the server is up (Voilà has no /api/status; / would run the notebook)."""
        try:
            urllib.request.urlopen(f"{self.base_url}/voila/static/", timeout=2).close()
        except urllib.error.HTTPError:
            pass

    def request_shutdown(self) -> None:
        """Voilà has no shutdown API: SIGTERM its process group (``stop`` then waits, bounded, and kills)."""
        os.killpg(self.pid, signal.SIGTERM)


class NotebookServer(JupyterLabServer):
    """Jupyter Notebook 7 (``python -m notebook``), like :class:`JupyterLabServer`: the same directories,
    token, config (TCP_NODELAY) and stop. Its pages: ``/tree`` (the file browser) and ``/notebooks/<name>``."""

    def tree_url(self) -> str:
        return f"{self.base_url}/tree?token={self.token}"

    def notebook_url(self, name: str) -> str:
        return f"{self.base_url}/notebooks/{name}?token={self.token}"

    def command(self) -> list[str]:
        cmd = [a for a in super().command() if not a.startswith("--LabApp.")]
        return [cmd[0], "-m", "notebook", *cmd[3:]]


# -- browser ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def browser_page(
    profile_dir: os.PathLike | str,
    *,
    viewport: tuple[int, int] = (1280, 900),
    timeout_ms: float = 30_000,
    watchdog: Watchdog | None = None,
) -> Iterator:
    """Headless Debian Chromium with a fresh profile; yields a Playwright page. Closed on exit."""
    from playwright.sync_api import sync_playwright

    before = {p.pid for p in _descendants(os.getpid())}
    with sync_playwright() as pw:
        # Playwright's driver: the process sync_playwright() just started. The browser is its child.
        drivers = [p for p in _descendants(os.getpid()) if p.pid not in before]
        browser_procs: list = []

        def driver_descendants() -> list:
            return [q for d in drivers for q in _descendants(d.pid)]

        def kill_browser() -> None:  # thread-safe; Playwright then reports the browser as closed
            _kill_processes(driver_descendants() or browser_procs)

        if watchdog is not None:
            watchdog.add(kill_browser)
        context = pw.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        browser_procs = driver_descendants()
        try:
            context.set_default_timeout(timeout_ms)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            with contextlib.suppress(Exception):
                context.close()
    # The driver has exited with the `with`; nothing it launched may survive it.
    _kill_processes(p for p in browser_procs + drivers if p.is_running())


@contextlib.contextmanager
def lab_page(
    workdir: os.PathLike | str,
    notebooks: Sequence[os.PathLike | str],
    *,
    open_name: str | None = None,
    time_limit: float = 600.0,
    nodelay: bool = True,
    app: str = "jupyterlab",
) -> Iterator[tuple[JupyterLabServer, object]]:
    """Server + browser + watchdog; opens ``open_name`` (default: the first notebook's name) and
    waits until its kernel is idle. Yields ``(server, page)``.

    ``app="notebook7"``: Jupyter Notebook 7 instead of JupyterLab; its file browser (``/tree``) is loaded
    first and must list the notebook, then the notebook's page is opened."""
    if app not in ("jupyterlab", "notebook7"):
        raise ValueError(f"app must be 'jupyterlab' or 'notebook7', got {app!r}")
    workdir = Path(workdir)
    name = open_name or Path(notebooks[0]).name
    server_class, sub = (JupyterLabServer, "jupyter") if app == "jupyterlab" else (NotebookServer, "notebook7")
    with _watched(time_limit, f"lab_page({name}, {app})") as dog:
        with server_class(workdir / sub, notebooks, nodelay=nodelay) as server:
            dog.add(server.kill)
            with browser_page(workdir / "chromium-profile", watchdog=dog) as page:
                if app == "jupyterlab":
                    open_notebook(page, server, name)
                else:
                    page.goto(server.tree_url(), timeout=90_000)
                    listed = f'.jp-DirListing-item[title*="{name}"], .jp-DirListing-itemText:text-is("{name}")'
                    page.locator(listed).first.wait_for(state="attached", timeout=90_000)
                    page.goto(server.notebook_url(name), timeout=90_000)
                    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(
                        state="visible", timeout=90_000)
                wait_kernel_idle(page, server, name, require_label=app == "jupyterlab")
                yield server, page


@contextlib.contextmanager
def _watched(time_limit: float, what: str) -> Iterator[Watchdog]:
    """A running :class:`Watchdog`; whatever ends the block after it fired becomes one clear TimeoutError."""
    dog = Watchdog(time_limit, what)
    try:
        with dog:
            yield dog
    except Exception as exc:
        if dog.fired:
            raise TimeoutError(f"watchdog killed the browser test after {time_limit:.0f} s") from exc
        raise
    if dog.fired:
        raise TimeoutError(f"watchdog killed the browser test after {time_limit:.0f} s")


@contextlib.contextmanager
def voila_page(
    workdir: os.PathLike | str,
    notebook: os.PathLike | str,
    *,
    time_limit: float = 600.0,
    nodelay: bool = True,
    timeout_ms: float = 120_000,
) -> Iterator[tuple[VoilaServer, object]]:
    """Voilà + browser + watchdog; loads the app page (Voilà runs the notebook then). Yields ``(server, page)``;
    wait in the page for the widgets the test needs."""
    workdir = Path(workdir)
    with _watched(time_limit, f"voila_page({Path(notebook).name})") as dog:
        with VoilaServer(workdir / "voila", notebook, nodelay=nodelay) as server:
            dog.add(server.kill)
            with browser_page(workdir / "chromium-profile", watchdog=dog) as page:
                page.goto(server.app_url(), timeout=timeout_ms)
                yield server, page


# -- in the page -------------------------------------------------------------------------------------
def open_notebook(page, server: JupyterLabServer, name: str, timeout_ms: float = 90_000) -> None:
    """Open ``name`` (relative to the server's root) in JupyterLab and wait for its cells."""
    page.goto(server.lab_url(name), timeout=timeout_ms)
    page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=timeout_ms)


def kernel_name_label(page) -> str:
    loc = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar-kernelName")
    return loc.first.inner_text().strip() if loc.count() else ""


def wait_kernel_idle(page, server: JupyterLabServer, name: str, timeout: float = 120.0, *,
                     require_label: bool = True) -> dict:
    """Poll /api/sessions until the notebook's kernel is idle and the toolbar shows its name
    (not "No Kernel"): running before that opens a blocking "Select Kernel" dialog. Returns the session.
    ``require_label=False``: the session alone (Notebook 7 shows the kernel elsewhere)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        with contextlib.suppress(Exception):
            for session in server.api("GET", "/api/sessions"):
                if session.get("path") == name or session.get("path", "").endswith("/" + name):
                    last = session
                    label = kernel_name_label(page)
                    labelled = (label and label != "No Kernel") or not require_label
                    if (session.get("kernel") or {}).get("execution_state") == "idle" and labelled:
                        return session
        if time.monotonic() > deadline:
            raise TimeoutError(f"kernel for {name} not idle after {timeout:.0f} s; session={last}, "
                               f"toolbar={kernel_name_label(page)!r}\n{server.log_tail()}")
        page.wait_for_timeout(200)


_CELL_STATE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim());
  const errors = [...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"], .jp-RenderedText[data-mime-type="application/vnd.jupyter.error"]')]
      .map(e => e.textContent.slice(0, 2000));
  return {prompts, errors};
}"""


def notebook_errors(page) -> list[str]:
    """Text of the error outputs (tracebacks) currently shown in the notebook."""
    return page.evaluate(_CELL_STATE_JS)["errors"]


def run_all(page, *, timeout: float = 300.0, raise_on_error: bool = True) -> None:
    """Run menu → Run All Cells; accept a "Select Kernel" dialog if one appears; wait until every code
    cell has an execution count. Raises if a cell shows an error output (unless raise_on_error=False)."""
    page.locator('.lm-MenuBar-itemLabel:text-is("Run")').click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    deadline = time.monotonic() + timeout
    dialog_accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
    while True:
        if dialog_accept.count():
            dialog_accept.first.click()
        state = page.evaluate(_CELL_STATE_JS)
        if raise_on_error and state["errors"]:
            raise AssertionError("a cell raised during Run All:\n" + "\n---\n".join(state["errors"]))
        if state["prompts"] and all(p not in ("[ ]:", "[*]:", "") for p in state["prompts"]):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Run All not finished after {timeout:.0f} s; prompts={state['prompts']}")
        page.wait_for_timeout(100)


def canvas_point(page, selector: str, x: float, y: float) -> tuple[float, float]:
    """Client (viewport) coordinates of canvas pixel (x, y) of the first element matching ``selector``.

    ipycanvas maps a mouse event back with ``x = canvas.width * (clientX - rect.left) / rect.width``.
    Mouse events carry whole client pixels, so this returns the whole client pixel that maps back
    into canvas pixel ``floor(x)`` (the one nearest that pixel's centre), or the rounded centre when
    a canvas pixel is smaller than a CSS pixel.
    """
    loc = page.locator(selector).first
    loc.scroll_into_view_if_needed()
    box = loc.evaluate(
        "el => { const r = el.getBoundingClientRect();"
        " return {left: r.left, top: r.top, width: r.width, height: r.height, w: el.width, h: el.height}; }"
    )

    def axis(v: float, start: float, css: float, pixels: int) -> float:
        scale = css / pixels
        lo, hi = start + int(v) * scale, start + (int(v) + 1) * scale  # client span of canvas pixel
        centre = start + (int(v) + 0.5) * scale
        best = round(centre)
        if not (lo <= best < hi):
            for cand in (best - 1, best + 1):
                if lo <= cand < hi:
                    best = cand
                    break
        return float(best)

    return axis(x, box["left"], box["width"], box["w"]), axis(y, box["top"], box["height"], box["h"])


def drag(page, selector: str, path_points: Sequence[tuple[float, float]], *,
         after_move: Callable[[int, tuple[float, float]], None] | None = None) -> list[tuple[float, float]]:
    """Press at the first canvas pixel of ``path_points``, move through the rest with real mouse events,
    release at the last. ``after_move(i, point)`` runs after each move (e.g. to wait for the widget).
    Returns the client coordinates used."""
    client = [canvas_point(page, selector, x, y) for x, y in path_points]
    page.mouse.move(*client[0])
    page.mouse.down()
    for i, (cx, cy) in enumerate(client[1:], start=1):
        page.mouse.move(cx, cy)
        if after_move is not None:
            after_move(i, path_points[i])
    page.mouse.up()
    return client


def screenshot(page, name: str, *, full_page: bool = False) -> Path:
    """Save a PNG into artifacts/browser/ (gitignored) and return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
