"""The app's web page (Gradio Blocks): components and their wiring to a `Session`; no segmentation logic here.

Element ids (for browser tests and the screenshot tool): image (file upload), preview, classes, threshold,
segment (button), status (one line: what was done, or the error), overlay, shares, masks, shown (class whose
score maps are drawn), score_maps.
"""

from __future__ import annotations

import html
import itertools
import re

import gradio as gr

from zegot_jax.app.session import MAX_CLASSES, MAX_UPLOAD_MB, Session, message_of
from zegot_jax.errors import UserError

TITLE = "ZegOT: segment any image with any class names"
# System fonts only: the page must render offline (Gradio's default theme asks Google Fonts for its font).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
# Small images (the demo's are 64×64) are shown enlarged, pixels kept sharp; the files are not changed.
CSS = """
#overlay img, #preview img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#score_maps img { image-rendering: pixelated; width: 100%; height: auto; }
"""


def as_text(message: str) -> str:
  """`message` for a Markdown component, to be shown as the characters it holds: HTML escaped, then every Markdown
  punctuation character backslash-escaped."""
  return re.sub(r"([\\`*_{}\[\]()#+\-.!|~>])", r"\\\1", html.escape(message, quote=False))


def _cleared(message: str) -> tuple:
  """The results (overlay, shares, masks, shown, score maps) emptied, so that no earlier result stays beside an
  error, and the message."""
  return None, None, None, gr.Dropdown(choices=[], value=None), None, message


def build(session: Session, examples: list[str]) -> gr.Blocks:
  """The page for one session; `examples`: image files offered with the run's dataset's class names.

  Every message in the status line starts with the request's number, so that a repeated request (the same error
  twice) still changes the page."""
  numbers = itertools.count(1)

  def numbered(message: str) -> str:  # shown as text: a class name is never read as HTML or Markdown
    return f"request {next(numbers)}: {as_text(message)}"

  def preview(path):
    if not path:
      return None, ""
    try:
      image, name, _ = session.read(path)
    except UserError as e:
      return None, numbered(message_of(e))
    return image, numbered(f"{name}: {image.shape[1]}×{image.shape[0]} as segmented")

  def segment(path, class_text, threshold, shown):
    try:
      result = session.segment(path, class_text, threshold, shown)
    except UserError as e:
      return _cleared(numbered(message_of(e)))
    choices = [(session.tag(n), n) for n in result.class_names]
    return (result.overlay, result.shares, result.masks, gr.Dropdown(choices=choices, value=result.shown),
            result.score_maps, numbered(result.message))

  def score_maps(path, class_text, shown):
    if not shown:
      return gr.skip(), gr.skip()
    try:
      return session.score_maps(path, class_text, shown), gr.skip()
    except UserError as e:
      return None, numbered(message_of(e))

  def pick_example(event: gr.SelectData):
    return examples[event.index]

  # Gradio keeps a copy of every file it serves: copies older than an hour are deleted, every hour.
  with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as page:
    gr.Markdown(f"## {TITLE}\n{session.describe()}")
    with gr.Row():
      with gr.Column(scale=2):
        image = gr.File(label=f"image (PNG, JPEG, ...; grey, RGBA, 16-bit and rotated photos are fine; up to "
                              f"{MAX_UPLOAD_MB} MB)",
                        type="filepath", elem_id="image")
        preview_image = gr.Image(label="as segmented", type="numpy", format="png", interactive=False, height=220,
                                 elem_id="preview")
        # Several lines: Enter starts a new line (a name per line is a list too); the button segments.
        classes = gr.Textbox(label=f"class names, separated by commas or new lines (up to {MAX_CLASSES})",
                             value=session.default_classes(), lines=2, max_lines=8, elem_id="classes")
        default, maximum, label = session.threshold_setting()
        threshold = gr.Slider(0.0, maximum, value=default, step=0.01, elem_id="threshold", label=label)
        button = gr.Button("Segment", variant="primary", elem_id="segment")
        status = gr.Markdown(elem_id="status")
        if examples:
          picks = gr.Gallery(examples, label="examples: the run's evaluation images (click one)", columns=6,
                             height=140, allow_preview=False, elem_id="examples")
          picks.select(pick_example, None, [image])
      with gr.Column(scale=3):
        overlay = gr.Image(label="segmentation", type="filepath", format="png", interactive=False, height=480,
                           elem_id="overlay")
        shares = gr.Label(label="share of the image per class", show_heading=False, elem_id="shares")
    masks = gr.Gallery(label="masks (white: the class)", format="png", columns=6, height="auto", elem_id="masks")
    # Its value is checked by the session against the request's own class list, not by Gradio against the choices
    # the page last had: a list changed between requests is never "not in the list of choices".
    shown = gr.Dropdown(label="score maps of the class", choices=[], allow_custom_value=True, elem_id="shown")
    maps = gr.Image(label="its score map S* per prompt (eq. 8), their sum (eq. 9) and its final probability "
                    "(eq. 11), the image resized to one window", type="filepath", format="png",
                    interactive=False, height=240, elem_id="score_maps")

    results = [overlay, shares, masks, shown, maps, status]  # what segment and _cleared return, in order
    image.change(preview, [image], [preview_image, status])
    for trigger in (button.click, threshold.release):
      trigger(segment, [image, classes, threshold, shown], results)
    shown.input(score_maps, [image, classes, shown], [maps, status])
  return page
