"""Driving the app in a real headless Chromium (Debian's `chromium` and `chromium-driver`) through Selenium: used
by the browser tests and by the screenshot tool. Needs `selenium` (the `test` extra) and the two Debian packages
(`apt-get install chromium chromium-driver`); nothing is downloaded.

    with AppServer(workdir) as url, Page(url) as page:
      page.upload("photo.png")
      page.set_classes("zigzag, dots, plain")
      status = page.segment()                   # waits for the request's line in the status
      overlay = page.image("overlay")           # the PNG the page shows, as an array
"""

from __future__ import annotations

import importlib.util
import io
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, and no calls to Google's services: this machine's network is closed (they would be refused at every
# start).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic")


def missing() -> str | None:
  """Why a browser test cannot run here (None when it can)."""
  if importlib.util.find_spec("selenium") is None:
    return "selenium is not installed (the test extra installs it)"
  for path in (CHROMIUM, CHROMEDRIVER):
    if not os.access(path, os.X_OK):
      return f"{path} is missing: apt-get install chromium chromium-driver"
  return None


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class AppServer:
  """`python -m zegot_jax.app` in a subprocess on a free port, until the block ends; the URL once it serves."""

  def __init__(self, workdir: str | pathlib.Path, *args: str, timeout: float = 180, log: pathlib.Path | None = None,
               env: dict[str, str] | None = None):
    self.env = {**os.environ, **(env or {})}
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.command = [sys.executable, "-m", "zegot_jax.app", f"--workdir={workdir}", f"--port={self.port}", *args]
    self.timeout, self.log = timeout, log

  def __enter__(self) -> str:
    self._log = open(self.log, "w") if self.log else subprocess.DEVNULL  # pylint: disable=consider-using-with
    self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
    deadline = time.monotonic() + self.timeout
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f"the app exited with code {self.process.returncode}: {' '.join(self.command)}")
      try:
        with urllib.request.urlopen(self.url, timeout=5) as response:
          if response.status == 200:
            return self.url
      except OSError:
        time.sleep(0.5)
    self.__exit__()
    raise TimeoutError(f"the app did not serve {self.url} within {self.timeout} s")

  def __exit__(self, *exc) -> None:
    """Stops the app as a service manager does (SIGTERM; it closes its server and deletes its files); kills it
    after 20 s. `returncode` then tells how it ended (0: cleanly)."""
    self.process.terminate()
    try:
      self.returncode = self.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.returncode = self.process.wait()
    if self.log:
      self._log.close()


class Page:
  """The app's page in headless Chromium. Methods wait for the page; `timeout` bounds every wait."""

  def __init__(self, url: str, *, width: int = 1400, height: int = 1000, timeout: float = 120):
    from selenium import webdriver  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top,import-outside-toplevel

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}"):
      options.add_argument(flag)
    self._profile = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"zegot_chromium_{os.getpid()}_{id(self)}"
    options.add_argument(f"--user-data-dir={self._profile}")
    self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    self.url, self.timeout = url, timeout
    self.driver.get(url)
    self._wait(lambda: self.driver.find_elements("id", "segment"), "the page to load")

  def __enter__(self) -> Page:
    return self

  def __exit__(self, *exc) -> None:
    self.driver.quit()
    shutil.rmtree(self._profile, ignore_errors=True)

  def _wait(self, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait  # pylint: disable=import-outside-toplevel

    return WebDriverWait(self.driver, self.timeout, poll_frequency=0.1).until(
        lambda _: condition(), f"timed out waiting for {what}")

  def _element(self, css: str):
    return self.driver.find_element("css selector", css)

  # The status line: "request <n>: <message>".

  def status(self) -> str:
    return self._element("#status").text.strip()

  def _request_number(self) -> int:
    match = re.match(r"request (\d+):", self.status())
    return int(match.group(1)) if match else 0

  def _after(self, action, what: str) -> str:
    """Does `action` and waits for the next numbered line in the status; returns it without its number."""
    before = self._request_number()
    action()
    self._wait(lambda: self._request_number() > before, what)
    return self.status().split(": ", 1)[1]

  # Inputs.

  def upload(self, path: str | pathlib.Path) -> str:
    """Puts a file in the image field (as a user's upload does), replacing the one there; returns the status
    line it gives."""
    for clear in self.driver.find_elements("css selector", "#image button[aria-label=Clear]"):
      clear.click()
    self._wait(lambda: self.driver.find_elements("css selector", "#image input[type=file]"), "the upload field")
    field = self._element("#image input[type=file]")
    self.driver.execute_script("arguments[0].style.display = 'block';", field)  # Gradio hides the real input
    return self._after(lambda: field.send_keys(str(pathlib.Path(path).resolve())), f"the upload of {path}")

  def set_classes(self, text: str) -> None:
    """Replaces the class names as a user does: select all, type (or delete)."""
    from selenium.webdriver.common.keys import Keys  # pylint: disable=g-import-not-at-top,import-outside-toplevel

    box = self._element("#classes textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text or Keys.BACKSPACE)

  def set_threshold(self, value: float) -> str:
    """Types the threshold into the slider's number box and leaves it (Tab), as a user does: leaving it releases
    the slider, which segments again."""
    from selenium.webdriver.common.keys import Keys  # pylint: disable=g-import-not-at-top,import-outside-toplevel

    box = self._element("#threshold input[type=number]")

    def act():
      box.send_keys(Keys.CONTROL, "a")
      box.send_keys(str(value), Keys.TAB)

    return self._after(act, f"the threshold {value}")

  def segment(self) -> str:
    return self._after(lambda: self._element("#segment").click(), "the segmentation")

  def shown_class(self) -> str:
    """The label of the class whose score maps are shown ('dots (seen)')."""
    return self._element("#shown input").get_attribute("value")

  def choose_class(self, tagged: str) -> str:
    """Picks a class in the score-map dropdown by its label ('dots (seen)'); returns the score maps' file name."""
    before = self.image_urls("score_maps")
    box = self._element("#shown input")
    box.click()

    def option():  # the list renders after the click: wait for the option itself
      for o in self.driver.find_elements("css selector", "ul[role=listbox] li"):
        if o.text.split("\n")[-1].strip() == tagged:
          return o
      return None

    self._wait(option, f"the option {tagged!r}").click()
    self._wait(lambda: self.image_urls("score_maps") and self.image_urls("score_maps") != before,
               f"the score maps of {tagged}")
    return self.image_urls("score_maps")[0].rsplit("/", 1)[1]

  # Outputs.

  def image_urls(self, elem_id: str) -> list[str]:
    return [e.get_attribute("src") for e in self.driver.find_elements("css selector", f"#{elem_id} img")
            if e.get_attribute("src")]

  def fetch(self, url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=30) as response:
      return np.asarray(Image.open(io.BytesIO(response.read())))

  def image(self, elem_id: str) -> np.ndarray:
    """The one image an output shows (overlay, preview, score_maps), as served to the page."""
    urls = self.image_urls(elem_id)
    if len(urls) != 1:
      raise ValueError(f"#{elem_id} shows {len(urls)} images")
    return self.fetch(urls[0])

  def masks(self) -> dict[str, np.ndarray]:
    """The mask gallery: file name → mask, in the page's order."""
    return {url.rsplit("/", 1)[1]: self.fetch(url) for url in self.image_urls("masks")}

  def shares(self) -> str:
    return self._element("#shares").text

  def screenshot(self, path: str | pathlib.Path, full_height: bool = True) -> None:
    for _ in range(10 if full_height else 0):  # grow the window until the page fits (images lay out late)
      width, outer, inner, page = self.driver.execute_script(
          "return [window.outerWidth, window.outerHeight, window.innerHeight, "
          "document.documentElement.scrollHeight]")
      if page <= inner:
        break
      self.driver.set_window_size(width, page + outer - inner + 20)
      time.sleep(0.5)
    self.driver.execute_script("window.scrollTo(0, 0)")
    self.driver.save_screenshot(str(path))

  def pick_example(self, index: int) -> str:
    """Clicks the index-th example image; returns the status line its upload gives."""
    return self._after(lambda: self.driver.find_elements("css selector", "#examples button img")[index].click(),
                       f"example {index}")
