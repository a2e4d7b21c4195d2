"""The Gradio app: a Chat tab and a Proposals tab over :class:`demo.logic.DemoLogic`.

Named API endpoints (usable from ``gradio_client``): ``/ask``, ``/detect``, ``/describe``,
``/grounded_caption`` and ``/proposals``. Each takes the image as a file, so every call is
self-contained; the predictor's image cache makes repeated calls on one image cheap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gradio as gr

from chatrex.predictor import DTYPES

from .logic import DemoLogic, Reply

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# CPU inference: one request at a time keeps latency predictable and memory flat.
CONCURRENCY_LIMIT = 1


def example_images() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []


def _chat_turn(history, user_text: str, reply: Reply):
    history = list(history or [])
    history.append({"role": "user", "content": user_text})
    history.append({"role": "assistant", "content": reply.text})
    return history


BUNDLED_NOTE = ("The bundled model `chatrex-tiny` was trained only on this project's synthetic world of shapes, houses, "
                "boats, cars, trees and people: on a photograph it answers confidently and wrongly. Try the example images, "
                "or load real weights with `chatrex demo --model PATH`.")


def build_app(logic: DemoLogic, title: str = "ChatRex", note: str = "") -> gr.Blocks:
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nUpload an image and ask about it. Grounded phrases are highlighted in the colour of their boxes."
                    + (f"\n\n{note}" if note else ""))
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", label="Image", elem_id="input-image")
                    if example_images():
                        gr.Examples(example_images(), inputs=image, label="Examples")
                    annotated = gr.Image(label="Boxes", elem_id="annotated-image", interactive=False)
                with gr.Column(scale=1):
                    notice = gr.Markdown(elem_id="notice")
                    chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=320)
                    highlighted = gr.HighlightedText(label="Grounded answer", elem_id="grounded", show_legend=False, combine_adjacent=False)
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

            def show(history, user_text, reply: Reply):
                hl = gr.HighlightedText(value=reply.spans, color_map=reply.color_map)
                return _chat_turn(history, user_text, reply), hl, reply.image, reply.notice, ""

            def on_send(img, text, history):
                return show(history, text or "", logic.ask(img, text))

            def on_detect(img, text, history):
                return show(history, f"Detect: {text}", logic.detect(img, text))

            def on_describe(img, idx, lvl, history):
                return show(history, f"Describe box {idx} ({lvl})", logic.describe(img, idx, lvl))

            def on_caption(img, history):
                return show(history, "Grounded caption", logic.grounded_caption(img))

            outputs = [chatbot, highlighted, annotated, notice, message]
            send.click(on_send, [image, message, chatbot], outputs, api_visibility="private")
            message.submit(on_send, [image, message, chatbot], outputs, api_visibility="private")
            detect_btn.click(on_detect, [image, phrase, chatbot], outputs, api_visibility="private")
            describe_btn.click(on_describe, [image, index, level, chatbot], outputs, api_visibility="private")
            caption_btn.click(on_caption, [image, chatbot], outputs, api_visibility="private")

        with gr.Tab("Proposals"):
            with gr.Row():
                with gr.Column():
                    p_image = gr.Image(type="filepath", label="Image")
                    granularity = gr.Radio(["both", "coarse", "fine"], value="both", label="Granularity")
                    threshold = gr.Slider(0.0, 1.0, value=logic.predictor.proposal_min_score, step=0.05, label="Score threshold")
                    p_btn = gr.Button("Propose", variant="primary")
                with gr.Column():
                    p_out = gr.Image(label="Proposals (coarse orange, fine blue; numbers are box indices)")
                    p_summary = gr.Markdown()
            p_btn.click(lambda img, g, t: logic.proposals(img, g, t), [p_image, granularity, threshold], [p_out, p_summary], api_visibility="private")

        # Named, stateless endpoints for gradio_client (hidden from the page).
        with gr.Row(visible=False):
            api_image = gr.Image(type="filepath")
            api_text = gr.Textbox()
            api_index = gr.Number(precision=0)
            api_level = gr.Textbox()
            api_json = gr.JSON()
            api_img_out = gr.Image()

        def as_api(reply: Reply):
            return {"text": reply.text, "spans": [[t, lab] for t, lab in reply.spans], "notice": reply.notice}, reply.image

        def api_ask(img, question):
            return as_api(logic.ask(img, question))

        def api_detect(img, phrase):
            return as_api(logic.detect(img, phrase))

        def api_describe(img, idx, lvl):
            return as_api(logic.describe(img, idx, lvl or "description"))

        def api_caption(img):
            return as_api(logic.grounded_caption(img))

        def api_proposals(img, gran):
            drawn, summary = logic.proposals(img, gran or "both")
            return {"summary": summary}, drawn

        for fn, inputs in ((api_ask, [api_image, api_text]), (api_detect, [api_image, api_text]),
                           (api_describe, [api_image, api_index, api_level]), (api_caption, [api_image]),
                           (api_proposals, [api_image, api_text])):
            gr.Button(visible=False).click(fn, inputs, [api_json, api_img_out], api_name=fn.__name__.removeprefix("api_").replace("caption", "grounded_caption"))
    app.queue(default_concurrency_limit=CONCURRENCY_LIMIT)
    return app


def load_logic(model: str = "chatrex-tiny", device: str = "cpu", dtype: str | None = None) -> DemoLogic:
    from chatrex import ChatRexPredictor

    return DemoLogic(ChatRexPredictor.from_pretrained(model, device=device, torch_dtype=dtype))


def main(argv=None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m demo", description="Serve the ChatRex Gradio demo (chat with box answers, UPN proposals).")
    parser.add_argument("--model", default="chatrex-tiny", help="bundled model name or local folder (default chatrex-tiny)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="weights dtype (default float32 on cpu, bfloat16 on cuda)")
    args = parser.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        logic = load_logic(args.model, args.device, args.dtype)
    except ValueError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"model": args.model, "url": f"http://{args.host}:{args.port}"}), flush=True)
    from chatrex.predictor import BUNDLED_DIR, resolve_model_path

    bundled = resolve_model_path(args.model).parent == BUNDLED_DIR  # the same rule that chose the weights
    build_app(logic, note=BUNDLED_NOTE if bundled else "").launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    return 0
