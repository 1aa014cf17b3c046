"""The simulator's OpenAI-compatible routes: images/generations and chat/completions.

``/v1/images/generations`` runs a task inline and answers with url or b64_json images;
``/v1/chat/completions`` needs a channel and answers whole or as an SSE stream of deltas
(the answers and their billing by token: :mod:`.chat`), with a failure injected as
configured.
"""

from __future__ import annotations

import base64

from batchgen.sim.chat import ChatModel
from batchgen.sim.service import EVENT_STREAM, RouteGroup, Service
from batchgen.sim.state import FAILED, MODERATION, Account
from batchgen.sim.wire import (
    Request,
    chat_reply,
    chat_stream,
    error,
    parse_chat,
    parse_images_request,
)

__all__ = ["OpenAIRoutes"]


class OpenAIRoutes(RouteGroup):
    """Handlers of the OpenAI-compatible routes; each takes the request and its account."""

    def __init__(self, service: Service) -> None:
        super().__init__(service)
        self.chat_model = ChatModel(self.state)

    async def images_generations(self, req: Request, account: Account) -> None:
        service = self.service
        service.check_submit_bucket(account)
        order, b64 = parse_images_request(await req.json_object(), service.check_model)
        task = await service.accept(req, account, order, pollable=False, unified=False)
        view = await service.wait_end(req, task)
        if view.status == FAILED:
            if view.failure_reason in MODERATION:
                raise error(400, "content_policy_violation", view.error)
            raise error(500, "upstream_error", view.error)
        data: list[dict[str, object]] = []
        urls = service.urls(req, task)
        for i in range(order.images):
            if b64:
                image = service.files.image(task, i)
                task.record_served(image.sha256)
                encoded = base64.b64encode(image.data).decode()
                data.append({"url": "", "b64_json": encoded, "revised_prompt": task.prompt})
            else:
                data.append({"url": urls[i], "b64_json": "", "revised_prompt": task.prompt})
        await req.respond(200, {"created": int(self.state.wall(task.created)), "data": data})

    async def chat(self, req: Request, account: Account) -> None:
        body = await req.json_object()
        chat = parse_chat(body)
        self.service.check_channel(chat.model)  # a channel, but no per-call price
        created = int(self.state.wall())
        chat_id = f"chatcmpl-{req.request_id.decode()}"
        turn = self.chat_model.answer(body, chat.model, chat.last_user_text)
        if chat.failing:
            self.state.counters.errors_injected += 1
        else:
            self.chat_model.charge(account, chat.model, turn)
        if not chat.stream:
            if chat.failing:
                raise error(500, "upstream_error", "上游异常 (upstream error, simulated)")
            await req.respond(
                200, chat_reply(chat_id, created, chat.model, turn.text, turn.usage())
            )
            return
        await req.start(200, EVENT_STREAM)
        usage = turn.usage() if turn.include_usage else None
        for frame in chat_stream(chat_id, created, chat.model, turn.text, chat.failing, usage):
            await req.chunk(frame)
        await req.chunk(b"", more=False)
