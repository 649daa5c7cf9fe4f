"""`hearth chat`: a terminal chat with a running server through the `openai` SDK, streaming.

The conversation is kept and sent with each question; `/reset` forgets it, `/exit` (or end of input)
quits, Ctrl-C while an answer streams stops that answer (the server frees its slot) and keeps the chat.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import openai
from openai.types.chat import ChatCompletionMessageParam

EXIT_COMMANDS = ("/exit", "/quit", "/bye")


def api_base(url: str) -> str:
    """`http://host:port` or `http://host:port/v1` -> `http://host:port/v1`."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


@dataclass
class Conversation:
    """The messages sent with the next question; the system prompt survives `/reset`."""

    system: str | None = None
    messages: list[ChatCompletionMessageParam] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []


@dataclass(frozen=True)
class Answer:
    text: str
    completion_tokens: int | None
    seconds: float
    stopped: bool  # Ctrl-C


def ask(
    client: openai.OpenAI,
    model: str,
    messages: list[ChatCompletionMessageParam],
    out: TextIO,
    **sampling: Any,
) -> Answer:
    """Stream one answer to `out`; Ctrl-C ends it early (the stream is closed, so the server stops)."""
    started = time.monotonic()
    parts: list[str] = []
    tokens = None
    stopped = False
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=sampling,
    )
    try:
        for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                text = choice.delta.content or ""
                parts.append(text)
                out.write(text)
                out.flush()
    except KeyboardInterrupt:
        stopped = True
    finally:
        stream.close()
    return Answer("".join(parts), tokens, time.monotonic() - started, stopped)


def pick_model(client: openai.OpenAI, wanted: str | None) -> str:
    """`wanted`, else the first model the server lists; asking also checks the server and the key."""
    models = client.models.list().data
    if wanted:
        return wanted
    if not models:
        raise SystemExit("hearth: error: the server lists no models")
    return models[0].id


def repl(
    client: openai.OpenAI, model: str, conversation: Conversation, stdin: TextIO, out: TextIO, **sampling: Any
) -> None:
    """Read questions from `stdin` until `/exit` or its end; print each streamed answer and its speed."""
    prompt = "you> " if stdin.isatty() else ""
    while True:
        out.write(prompt)
        out.flush()
        line = stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:
            continue
        if question in EXIT_COMMANDS:
            break
        if question == "/reset":
            conversation.reset()
            out.write("(conversation cleared)\n")
            continue
        conversation.messages.append({"role": "user", "content": question})
        answer = ask(client, model, conversation.messages, out, **sampling)
        conversation.messages.append({"role": "assistant", "content": answer.text})
        out.write("\n" + summary(answer) + "\n")


def summary(answer: Answer) -> str:
    if answer.completion_tokens is None:
        return "[stopped]" if answer.stopped else "[done]"
    rate = answer.completion_tokens / answer.seconds if answer.seconds > 0 else 0.0
    return f"[{'stopped, ' if answer.stopped else ''}{answer.completion_tokens} tokens, {rate:.1f} tok/s]"


def chat(args: argparse.Namespace) -> int:
    """`hearth chat`: 0 at the end of the chat, 1 when the server cannot be reached."""
    client = openai.OpenAI(base_url=api_base(args.url), api_key=args.api_key, max_retries=0, timeout=600)
    sampling = {
        key: value
        for key, value in (("temperature", args.temperature), ("max_tokens", args.max_tokens))
        if value is not None
    }
    try:
        model = pick_model(client, args.model)
        if sys.stdin.isatty():
            hint = "/reset forgets the conversation, /exit quits"
            print(f"chatting with {model} at {api_base(args.url)}; {hint}", file=sys.stderr)
        repl(client, model, Conversation(args.system), sys.stdin, sys.stdout, **sampling)
    except openai.APIConnectionError:
        print(f"hearth: error: cannot reach {args.url} (is `hearth serve` running?)", file=sys.stderr)
        return 1
    except openai.APIStatusError as e:
        print(f"hearth: error: {e.status_code}: {error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0


def error_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return str(error)
