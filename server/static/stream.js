// Streaming a chat completion: the SSE body of /v1/chat/completions, and the deltas added up into a message.

// Yields the JSON of each `data:` event of an SSE body until `[DONE]`.
export async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// Adds one choice's `delta` to `message` ({content, reasoning, toolCalls}); true when it carried tokens.
export function applyDelta(message, delta) {
  let grew = false;
  if (delta.content) {
    message.content += delta.content;
    grew = true;
  }
  const reasoning = delta.reasoning_content || delta.reasoning;
  if (reasoning) {
    message.reasoning = (message.reasoning || "") + reasoning;
    grew = true;
  }
  for (const piece of delta.tool_calls || []) {
    message.toolCalls = message.toolCalls || [];
    const call = (message.toolCalls[piece.index || 0] ||= { id: "", name: "", arguments: "" });
    if (piece.id) call.id = piece.id;
    if (piece.function && piece.function.name) call.name += piece.function.name;
    if (piece.function && piece.function.arguments) call.arguments += piece.function.arguments;
    grew = true;
  }
  return grew;
}

// The words for a failed response: the server's own error message, with what to do where it is clear.
export async function errorText(response) {
  let message = response.statusText;
  try {
    const body = await response.json();
    message = (body.error && body.error.message) || message;
  } catch (e) {
    // not JSON: the status text it is
  }
  if (response.status === 401) return "this server needs an API key (enter it above): " + message;
  return `the server answered ${response.status}: ${message}`;
}

export function rate(tokens, seconds) {
  return seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
}
