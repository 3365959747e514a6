r"""Serves a trained run in the browser: upload an image, type class names, see the segmentation, the per-class
masks and shares, and each prompt's score maps of a chosen class.

  python -m zegot_jax.app --workdir runs/demo                  # then open http://127.0.0.1:7860
  python -m zegot_jax.app --workdir runs/voc --port 8080 --host 0.0.0.0 --max_side 2048
  python -m zegot_jax.app --workdir runs/voc --config configs/voc12_zs3.py --config.data_dir=/data/tfds

The page segments through the same `Predictor` as `python -m zegot_jax.predict` and writes the same files (the
overlay and masks are predict's, pixel for pixel). The model is loaded once; a class list's text embeddings are
kept; the model's program is compiled on the first request of each window count and number of classes (for one
window and the dataset's class list before serving, unless --nowarm_up), and reused. When the run's dataset is
built (the demo's is), its first evaluation images with an unseen class are offered as examples. Needs the `app`
extra: pip install -e ".[app]".
"""

from __future__ import annotations

import functools
import os
import signal
import tempfile
import time

from absl import flags, logging
from ml_collections import config_flags

from zegot_jax import cli
from zegot_jax.errors import ConfigError


def _define_flags() -> dict:
  """The CLI's flags, defined only when run as a program (so that importing this module defines none)."""
  return dict(
      workdir=flags.DEFINE_string("workdir", None, "a training run's directory"),
      port=flags.DEFINE_integer("port", 7860, "the port to serve on"),
      host=flags.DEFINE_string("host", "127.0.0.1", "the address to serve on (0.0.0.0: every interface)"),
      step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"),
      config=config_flags.DEFINE_config_file("config", None, "the run's config file (default: <workdir>/config.json); "
                                             "its fields may be overridden: --config.clip.attention=xla",
                                             lock_config=True),
      max_side=flags.DEFINE_integer("max_side", 1024, "images whose long side is over this are downscaled to it"),
      examples=flags.DEFINE_integer("examples", 6, "evaluation images offered as examples (0: none)"),
      warm_up=flags.DEFINE_bool("warm_up", True, "compile the model for one window and the dataset's classes "
                                "before serving"),
  )


def _import_gradio():
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the app works offline
  try:
    import gradio  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  except ImportError as e:
    raise ConfigError('the app needs Gradio, which the "app" extra installs: pip install -e ".[app]"') from e
  return gradio


def _interrupt(signum, frame):
  """SIGTERM (a service manager, a test) stops the app as Ctrl-C does: the server closes, the temporary files go."""
  del signum, frame
  raise KeyboardInterrupt


def check_address(host: str, port: int) -> None:
  """ConfigError naming the problem when the app could not serve at host:port (checked before the model loads):
  a host that is no address of this machine, or a port in use."""
  import errno  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import socket  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
  except socket.gaierror as e:
    raise ConfigError(f"--host={host}: not a known address ({e.strerror}); use 127.0.0.1 (this machine only) or "
                      f"0.0.0.0 (every interface)") from e
  family, kind, proto, _, address = infos[0]
  with socket.socket(family, kind, proto) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closing socket is no user
    try:
      probe.bind(address)
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise ConfigError(f"cannot serve at http://{host}:{port}: the port is in use; pass another --port, or stop "
                          f"what uses this one") from e
      if e.errno == errno.EADDRNOTAVAIL:
        raise ConfigError(f"--host={host}: not an address of this machine; use 127.0.0.1 (this machine only) or "
                          f"0.0.0.0 (every interface)") from e
      raise ConfigError(f"cannot serve at {host}:{port}: {e.strerror or e}; pass another --host or --port") from e


def main(argv, f: dict):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not 1 <= f["port"].value <= 65535:
    raise ConfigError(f"--port={f['port'].value}: expected a port number in 1-65535")
  if f["max_side"].value < 64:
    raise ConfigError(f"--max_side={f['max_side'].value}: expected at least 64 pixels")
  check_address(f["host"].value, f["port"].value)
  _import_gradio()
  from zegot_jax import prediction  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  from zegot_jax.app import session as session_lib, ui  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  start = time.perf_counter()
  config = f["config"].value  # None: the run's config.json
  predictor = prediction.Predictor(f["workdir"].value, config, f["step"].value)
  with tempfile.TemporaryDirectory(prefix="zegot_app_") as out_root:
    session = session_lib.Session(predictor, out_root, max_side=f["max_side"].value)
    page = ui.build(session, session.examples(f["examples"].value))
    if f["warm_up"].value:
      print(f"compiled for one window and the dataset's {len(predictor.spec.classes)} classes in "
            f"{session.warm_up():.1f} s", flush=True)
    url = f"http://{f['host'].value}:{f['port'].value}"
    signal.signal(signal.SIGTERM, _interrupt)
    try:
      page.launch(server_name=f["host"].value, server_port=f["port"].value, allowed_paths=[out_root], quiet=True,
                  ssr_mode=False, show_error=False, theme=ui.THEME, css=ui.CSS, footer_links=[],
                  prevent_thread_lock=True, max_file_size=f"{session_lib.MAX_UPLOAD_MB}mb")
    except OSError as e:
      why = "the port is in use" if "empty port" in str(e) else str(e)
      raise ConfigError(f"cannot serve at {url}: {why}; pass another --port, or stop what uses this one") from e
    print(f"serving {predictor.workdir} (step {predictor.step}) at {url} after {time.perf_counter() - start:.1f} s; "
          f"Ctrl-C stops", flush=True)
    try:
      page.block_thread()  # until Ctrl-C or SIGTERM: closes the server
    except KeyboardInterrupt:
      page.close()
  print("stopped", flush=True)


if __name__ == "__main__":
  _flags = _define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run(functools.partial(main, f=_flags))
