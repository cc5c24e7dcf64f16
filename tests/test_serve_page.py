"""The chat page at ``/`` in headless Chromium, driven by Playwright: attach an image, type, send, and the
answer streamed into the page is what ``model.chat`` gives for the same conversation; then a follow-up
turn, a turn with an uploaded clip, and a recording from Chromium's fake microphone encoded to WAV in the page.

Needs the ``chromium`` system package and pip ``playwright`` (its own browser download is not used);
skipped without them. ``SERVE_SCREENSHOT=path.png`` keeps a screenshot (README's ``docs/serve.png``)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
playwright = pytest.importorskip("playwright.sync_api", reason="the page test drives Chromium with playwright")

import mmtransfer  # noqa: E402
from mmtransfer.bundled import ASSETS  # noqa: E402
from mmtransfer.serve import ServeSettings, background, create_app  # noqa: E402
from tests.tiny_models import tiny_model_config  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
IMAGE, AUDIO = ASSETS / "sample.png", ASSETS / "sample.wav"


def send(page: Any, text: str, attach: tuple[str, Path] | None = None) -> str:
    """Attach a file, type ``text``, send it, wait for the streamed answer and return it."""
    if attach:
        page.set_input_files(f"#{attach[0]}", str(attach[1]))
        page.wait_for_selector(f"#{attach[0]}-preview:not([hidden])")
    page.fill("#text", text)
    n = page.locator(".assistant[data-done]").count() + 1
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.assistant[data-done]').length >= {n} "
                           "|| document.querySelector('.error')")
    assert page.locator(".error").count() == 0, page.locator(".error").first.text_content()
    return page.locator(".assistant").nth(n - 1).locator(".text").text_content()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install chromium)")
def test_page_streams_answers_to_an_image_a_clip_and_a_recording(tmp_path: Path) -> None:
    torch.manual_seed(0)
    mmtransfer.build_model(tiny_model_config("llama")).save_pretrained(tmp_path / "m")
    reference = mmtransfer.load(tmp_path / "m")
    with background(create_app(mmtransfer.load(tmp_path / "m"), ServeSettings("tiny"))) as url, \
            playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.fill("#max-tokens", "12")
            turn1 = [{"type": "image", "image": str(IMAGE)}, {"type": "text", "text": "what is in the picture?"}]
            first = send(page, "what is in the picture?", ("image", IMAGE))
            history = [{"role": "user", "content": turn1}]
            assert first == reference.chat(history, max_new_tokens=12)
            second = send(page, "and this?")  # text only: its answer depends on the first turn
            history += [{"role": "assistant", "content": first}, {"role": "user", "content": "and this?"}]
            assert second == reference.chat(history, max_new_tokens=12)
            third = send(page, "what do you hear?", ("audio", AUDIO))
            turn3 = [{"type": "audio", "audio": str(AUDIO)}, {"type": "text", "text": "what do you hear?"}]
            history += [{"role": "assistant", "content": second}, {"role": "user", "content": turn3}]
            assert third == reference.chat(history, max_new_tokens=12)
            if os.environ.get("SERVE_SCREENSHOT"):
                page.screenshot(path=os.environ["SERVE_SCREENSHOT"])
            check_recording(page, reference)
        finally:
            browser.close()


def check_recording(page: Any, reference: mmtransfer.MultimodalGPT) -> None:
    """Record a second of the fake microphone; the page sends it as 16 kHz 16-bit WAV, and the answer is the
    model's to that clip."""
    page.click("#new-chat")
    page.click("#record")
    page.wait_for_selector("#recording:not([hidden])")
    page.wait_for_timeout(1000)
    page.click("#record")
    page.wait_for_selector("#audio-preview:not([hidden])")
    with page.expect_request("**/v1/chat/completions") as request:
        answer = send(page, "transcribe")
    part = json.loads(request.value.post_data)["messages"][0]["content"][0]["input_audio"]
    wave, rate = sf.read(io.BytesIO(base64.b64decode(part["data"])), dtype="float32")
    assert (part["format"], rate, sf.info(io.BytesIO(base64.b64decode(part["data"]))).subtype) == ("wav", 16000,
                                                                                                   "PCM_16")
    assert 0.5 < len(wave) / rate < 3 and abs(wave).max() > 0.01  # about a second of the fake mic's beeps
    conv = [{"role": "user", "content": [{"type": "audio", "audio": wave, "sample_rate": rate},
                                         {"type": "text", "text": "transcribe"}]}]
    assert answer == reference.chat(conv, max_new_tokens=12)
