"""The browser app: any image, any class names, any trained run (`python -m zegot_jax.app --workdir RUN`).

session.py  what each request does (through prediction.Predictor, the same inference as predict and evaluation)
ui.py       the Gradio page wired to a Session
browser.py  driving the page in headless Chromium (the tests and the screenshot tool)
screenshot.py  `python -m zegot_jax.app.screenshot`: each request's latency, and the README's screenshot

Needs the `app` extra (`pip install -e ".[app]"`). The core of the package never imports it.
"""
