"""The Gradio app: one image shared by a Chat tab and a Proposals tab, over
:class:`demo.logic.DemoLogic`.

Named API endpoints (usable from ``gradio_client``): ``/ask``, ``/detect``, ``/describe``,
``/grounded_caption`` and ``/proposals``. Each takes the image as a file, so every call is
self-contained; the predictor's image cache makes repeated calls on one image cheap. ``/ask``
takes an optional ``history`` of ``[prompt, raw]`` pairs from earlier replies, so a client can
hold a conversation.
"""

from __future__ import annotations

import html
import json
import os
import sys
from pathlib import Path

import gradio as gr

from .lifetime import exit_with_parent
from .logic import DemoLogic, Reply, prepare_image, reply_html

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# CPU inference: one request at a time keeps latency predictable and memory flat.
CONCURRENCY_LIMIT = 1


def example_images() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []


BUNDLED_NOTE = ("The bundled model `chatrex-tiny` was trained only on this project's synthetic world of shapes, houses, "
                "boats, cars, trees and people: on a photograph it answers confidently and wrongly. Try the example images, "
                "or load real weights with `chatrex demo --model PATH`.")


def new_image(path: str | None):
    """On an upload: the image to show (downscaled as the model will see it) and a notice, or
    no change and the reason the file cannot be used. The file box is emptied either way, ready
    for the next upload."""
    rgb, notice = prepare_image(path)
    return (gr.skip() if rgb is None else rgb), notice, None


def stream_turn(chat, turns, shown: str, replies, controls: int = 0):
    """Show one exchange in the chat as it comes in. Yields ``(chat, annotated image, notice,
    turns, *controls)``: the image and the turns are only updated by the final reply.

    ``turns`` is the model's side of the conversation: ``[prompt, raw answer]`` pairs, kept
    apart from the chat's HTML so that later questions get the model's own markup back. The
    ``controls`` (send buttons and the like) are disabled until the answer is complete: a
    question sent meanwhile would carry the turns from before this answer."""
    asked = list(chat or []) + [{"role": "user", "content": html.escape(shown)}]
    busy = [gr.update(interactive=False)] * controls
    reply = None
    for reply in replies:
        yield asked + [{"role": "assistant", "content": reply_html(reply)}], gr.skip(), gr.skip(), gr.skip(), *busy
    if reply.turn is not None:
        turns = list(turns or []) + [list(reply.turn)]
    final = asked + [{"role": "assistant", "content": reply_html(reply)}]
    yield final, reply.image, reply.notice, turns, *[gr.update(interactive=True)] * controls


def _image_column():
    upload = gr.File(label="Upload an image", type="filepath", file_count="single", elem_id="input-image", height=120)
    notice = gr.Markdown(elem_id="notice")
    # Not interactive: an upload goes through the file box above, which hands Gradio's image
    # preprocessing only files that load_image has already read.
    image = gr.Image(label="Image", type="filepath", format="png", interactive=False, elem_id="current-image")
    if example_images():
        gr.Examples(example_images(), inputs=image, outputs=notice, fn=lambda _: "", run_on_click=True, label="Examples",
                    api_visibility="private")
    upload.upload(new_image, upload, [image, notice, upload], api_visibility="private")
    return image, notice


def _chat_tab(logic: DemoLogic, image, notice):
    turns = gr.State([])
    with gr.Row():
        with gr.Column(scale=1):
            annotated = gr.Image(label="Boxes", elem_id="annotated-image", format="png", interactive=False)
        with gr.Column(scale=1):
            chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=360, render_markdown=False, latex_delimiters=[])
            message = gr.Textbox(label="Message", placeholder="e.g. Find the red car.  How many boats are there?", elem_id="message")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="send")
                caption_btn = gr.Button("Grounded caption", elem_id="caption")
            with gr.Row():
                phrase = gr.Textbox(label="Detect", placeholder="a phrase, e.g. boat", elem_id="phrase")
                detect_btn = gr.Button("Detect", elem_id="detect")
            with gr.Row():
                index = gr.Number(label="Box index", precision=0, value=0, elem_id="box-index")
                level = gr.Dropdown(["category", "phrase", "description", "referring"], value="description", label="Describe as")
                describe_btn = gr.Button("Describe region", elem_id="describe")

    # Every button's turn joins the model's history, with the prompt the model was given:
    # the grounded caption is an ordinary question, and detect / describe answers name boxes
    # of this image, so a follow-up ("what colour is it?") can refer to them. Detect and
    # describe themselves run without history, as their templates were trained.
    controls = [message, send, caption_btn, detect_btn, describe_btn]

    def on_send(img, text, chat, past):
        yield from stream_turn(chat, past, text or "", logic.ask_stream(img, text, past), len(controls))

    def on_caption(img, chat, past):
        yield from stream_turn(chat, past, "Grounded caption", logic.grounded_caption_stream(img, past), len(controls))

    def on_detect(img, text, chat, past):
        yield from stream_turn(chat, past, f"Detect: {text or ''}", [logic.detect(img, text)], len(controls))

    def on_describe(img, idx, lvl, chat, past):
        yield from stream_turn(chat, past, f"Describe box {idx} ({lvl})", [logic.describe(img, idx, lvl)], len(controls))

    outputs = [chatbot, annotated, notice, turns, *controls]
    answering = [trigger(fn, inputs, outputs, api_visibility="private") for trigger, fn, inputs in (
        (send.click, on_send, [image, message, chatbot, turns]), (message.submit, on_send, [image, message, chatbot, turns]),
        (caption_btn.click, on_caption, [image, chatbot, turns]), (detect_btn.click, on_detect, [image, phrase, chatbot, turns]),
        (describe_btn.click, on_describe, [image, index, level, chatbot, turns]))]
    send.click(lambda: "", None, message, api_visibility="private")
    message.submit(lambda: "", None, message, api_visibility="private")
    chatbot.clear(lambda: [], None, turns, api_visibility="private")
    # Box indices belong to one image: a new image starts a new conversation, and an answer
    # still streaming about the old one is stopped rather than written into the new chat.
    image.change(lambda: ([], [], None, *[gr.update(interactive=True)] * len(controls)), None, [chatbot, turns, annotated, *controls],
                 cancels=answering, api_visibility="private")


def _proposals_tab(logic: DemoLogic, image):
    with gr.Row():
        with gr.Column(scale=1):
            granularity = gr.Radio(["both", "coarse", "fine"], value="both", label="Granularity")
            threshold = gr.Slider(0.0, 1.0, value=logic.predictor.proposal_min_score, step=0.05, label="Score threshold")
            p_btn = gr.Button("Propose", variant="primary", elem_id="propose")
            p_summary = gr.Markdown(elem_id="proposal-summary")
        with gr.Column(scale=2):
            p_out = gr.Image(label="Proposals (coarse orange, fine blue; numbers are box indices)", format="png", interactive=False,
                             elem_id="proposals-image")
    p_btn.click(lambda img, g, t: logic.proposals(img, g, t), [image, granularity, threshold], [p_out, p_summary], api_visibility="private")
    image.change(lambda: (None, ""), None, [p_out, p_summary], api_visibility="private")


def _api_endpoints(logic: DemoLogic):
    """Named, self-contained endpoints for gradio_client (hidden from the page). Images come in
    as plain files, so a bad file gets the same friendly message as in the page."""
    with gr.Row(visible=False):
        api_image = gr.File(type="filepath", label="image")
        api_text = gr.Textbox(label="text")
        api_index = gr.Number(precision=0, label="index")
        api_level = gr.Textbox(label="level")
        api_history = gr.JSON(label="history")
        api_json = gr.JSON(label="reply")
        api_img_out = gr.Image(format="png", label="annotated")

    def as_api(reply: Reply):
        # [prompt, raw] of any reply is the next /ask's history entry for this turn.
        prompt, raw = reply.turn or (None, None)
        return {"text": reply.text, "spans": [[t, lab] for t, lab in reply.spans], "notice": reply.notice,
                "prompt": prompt, "raw": raw, "history_turns": reply.history_turns}, reply.image

    def api_ask(image, question, history=None):
        """history: earlier turns about the same image, oldest first, as [prompt, raw] pairs
        taken from earlier replies."""
        return as_api(logic.ask(image, question, history))

    def api_detect(image, phrase):
        return as_api(logic.detect(image, phrase))

    def api_describe(image, index, level):
        return as_api(logic.describe(image, index, level or "description"))

    def api_grounded_caption(image):
        return as_api(logic.grounded_caption(image))

    def api_proposals(image, granularity):
        drawn, summary = logic.proposals(image, granularity or "both")
        return {"summary": summary}, drawn

    for fn, inputs in ((api_ask, [api_image, api_text, api_history]), (api_detect, [api_image, api_text]),
                       (api_describe, [api_image, api_index, api_level]), (api_grounded_caption, [api_image]),
                       (api_proposals, [api_image, api_text])):
        gr.Button(visible=False).click(fn, inputs, [api_json, api_img_out], api_name=fn.__name__.removeprefix("api_"))


def build_app(logic: DemoLogic, title: str = "ChatRex", note: str = "") -> gr.Blocks:
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nUpload an image and chat about it; follow-up questions may refer to earlier answers. "
                    "Grounded phrases are highlighted in the colour of their boxes." + (f"\n\n{note}" if note else ""))
        with gr.Row():
            with gr.Column(scale=1):
                image, notice = _image_column()
            with gr.Column(scale=3):
                with gr.Tab("Chat"):
                    _chat_tab(logic, image, notice)
                with gr.Tab("Proposals"):
                    _proposals_tab(logic, image)
        _api_endpoints(logic)
    app.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    return app


def load_logic(model: str = "chatrex-tiny", device: str = "cpu", dtype: str | None = None) -> DemoLogic:
    from chatrex import ChatRexPredictor

    return DemoLogic(ChatRexPredictor.from_pretrained(model, device=device, torch_dtype=dtype))


def serve(model: str = "chatrex-tiny", host: str = "127.0.0.1", port: int = 7860, share: bool = False, device: str = "cpu",
          dtype: str | None = None) -> int:
    """Load ``model`` and serve the demo on ``host:port`` until stopped: what ``python -m demo``
    and ``chatrex demo`` run. Returns 2, with the reason on stderr, when the model cannot be
    loaded; 0 once the server stops."""
    exit_with_parent()  # only under `make demo` (CHATREX_EXIT_WITH_PARENT=1)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        logic = load_logic(model, device, dtype)
    except ValueError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    # One JSON line on stdout before the server starts: scripts and tests read the URL from it.
    print(json.dumps({"model": model, "url": f"http://{host}:{port}"}), flush=True)
    from chatrex.predictor import BUNDLED_DIR, resolve_model_path

    bundled = resolve_model_path(model).parent == BUNDLED_DIR  # the same rule that chose the weights
    build_app(logic, note=BUNDLED_NOTE if bundled else "").launch(server_name=host, server_port=port, share=share, show_error=True)
    return 0
