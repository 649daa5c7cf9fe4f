"""A Responses request translated onto the chat path.

Input items are checked one by one (by `type`; a message may leave it out) and stored in the
shape `GET /v1/responses/{id}/input_items` returns (ids given, text content as parts). The
conversation (a previous response's items, then this request's) becomes chat messages: an
assistant message and the `function_call` items after it one assistant turn with `tool_calls`,
each `function_call_output` a `tool` message, `developer` a system turn, reasoning items left out.
With `instructions` (never carried over from a previous response) first as a system message, tools,
`tool_choice`, `text.format` and `reasoning.effort`, that is a `ChatCompletionRequest`, which the
chat route's own functions render and constrain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from server.http.errors import APIError, validation_error_to_api
from server.openai.responses.objects import new_id
from server.openai.responses.schemas import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolDef,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
)
from server.openai.schemas import ChatCompletionRequest

M = TypeVar("M", bound=BaseModel)

ITEM_MODELS: dict[str, type[BaseModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}
ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
UNSUPPORTED_PARTS = {"input_image": "image", "input_file": "file", "input_audio": "audio"}
# Chat fields the chat path's errors name, as this API calls them.
PARAM_NAMES = {
    "messages": "input",
    "response_format": "text.format",
    "json_mode": "text.format",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "thinking": "reasoning",
}


def validated(model: type[M], data: Any, where: str) -> M:
    """`data` as `model`; a 400 naming the field under `where` (e.g. `input.2.call_id`) otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        error = validation_error_to_api(e)
    param = ".".join(p for p in (where, error.param) if p) or None
    message = error.message.replace(f"'{error.param}'", f"'{param}'") if error.param else error.message
    raise APIError(400, message, param=param, code=error.code)


def check_supported(body: ResponsesRequest) -> None:
    """400 naming the first field this server does not do."""
    refused = {
        "background": "background responses are not supported; omit background or set it to false",
        "conversation": "conversations are not supported; use previous_response_id",
        "prompt": "prompt templates are not supported; send input and instructions",
    }
    for field, message in refused.items():
        value = getattr(body, field)
        if value is not None and value is not False:
            raise APIError(400, message, param=field, code="unsupported_parameter")
    if body.top_logprobs or any("logprobs" in entry for entry in body.include or ()):
        message = "logprobs are not supported on /v1/responses; use /v1/chat/completions"
        raise APIError(400, message, param="include", code="unsupported_parameter")


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """This request's input as stored items (a string is one user message)."""
    raw = [{"role": "user", "content": body.input}] if isinstance(body.input, str) else body.input
    return [_item(data, f"input.{i}") for i, data in enumerate(raw)]


def _item(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = data.get("type", "message" if "role" in data else None)
    if not isinstance(kind, str) or kind not in ITEM_MODELS:
        message = f"input items of type {kind!r} are not supported; use message, function_call, "
        message += "function_call_output or reasoning items"
        raise APIError(400, message, param=f"{where}.type", code="unsupported_value")
    item = validated(ITEM_MODELS[kind], data, where)
    out = item.model_dump(by_alias=True, exclude_none=True)
    out["type"] = kind
    out["id"] = out.get("id") or new_id(ITEM_PREFIX[kind])
    if isinstance(item, MessageItem):
        out["content"] = _parts(item, where)
    if kind != "reasoning":
        out["status"] = "completed"
    return out


def _parts(item: MessageItem, where: str) -> list[dict[str, Any]]:
    text_type = "output_text" if item.role == "assistant" else "input_text"
    if isinstance(item.content, str):
        part = {"type": text_type, "text": item.content}
        return [{**part, "annotations": []} if text_type == "output_text" else part]
    parts = []
    for j, data in enumerate(item.content):
        kind = data.get("type")
        if kind in UNSUPPORTED_PARTS:
            message = f"{UNSUPPORTED_PARTS[kind]} input is not supported: the models here read text only"
            raise APIError(400, message, param=f"{where}.content.{j}", code="unsupported_value")
        parts.append(validated(ContentPart, data, f"{where}.content.{j}").model_dump(exclude_none=True))
    return parts


def _text(content: str | list[Any]) -> str:
    """A message's or call output's text: its text parts joined by newlines."""
    if isinstance(content, str):
        return content
    return "\n".join(str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict))


def chat_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """The conversation as chat messages (see the module's docstring)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": _text(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": _text(item["output"])}
            )
    return messages


BUILT_IN_TOOLS = "web_search, web_search_preview, file_search, code_interpreter, computer_use_preview, ..."


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Function tools in chat's shape; 400 `tools.<i>.type` for a built-in tool (web search, ...)."""
    out = []
    for i, data in enumerate(tools or ()):
        kind = data.get("type")
        if kind != "function":
            message = f"the tool type {kind!r} is not available on this server: only function tools are"
            raise APIError(400, message, param=f"tools.{i}.type", code="unsupported_value")
        tool = validated(FunctionToolDef, data, f"tools.{i}")
        function = tool.model_dump(exclude_none=True, exclude={"type"})
        function = {k: v for k, v in function.items() if k in ("name", "description", "parameters", "strict")}
        out.append({"type": "function", "function": function})
    return out or None


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """`{"type": "function", "name": X}` as chat's named choice; 400 for the other kinds."""
    if choice is None or isinstance(choice, str):
        return choice
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        kind = choice.get("type")
        message = f"tool_choice of type {kind!r} is not supported: use none, auto, required or a function"
        raise APIError(400, message, param="tool_choice", code="unsupported_value")
    return {"type": "function", "function": {"name": name}}


def response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = fmt.model_dump(
        by_alias=True, exclude_none=True, include={"name", "schema_", "strict", "description"}
    )
    return {"type": "json_schema", "json_schema": schema}


def chat_request(body: ResponsesRequest, items: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request the conversation `items` and `body`'s settings make."""
    messages = chat_messages(items, body.instructions)
    if not messages:
        raise APIError(400, "input must hold at least one item", param="input", code="invalid_value")
    data: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": response_format(body),
        "reasoning_effort": body.reasoning.effort if body.reasoning is not None else None,
    }
    with renamed_params():
        return validated(ChatCompletionRequest, {k: v for k, v in data.items() if v is not None}, "")


@contextmanager
def renamed_params() -> Iterator[None]:
    """Errors of the chat path naming chat fields name this API's instead (`messages` -> `input`)."""
    try:
        yield
    except APIError as e:
        param = (e.param or "").strip(".")
        head, dot, rest = param.partition(".")
        if head in PARAM_NAMES:
            new = PARAM_NAMES[head] + dot + rest
            e.message = e.message.replace(f"'{param}'", f"'{new}'").replace(head, PARAM_NAMES[head])
            e.param = new
        elif param != e.param:
            e.param = param or None
        raise
