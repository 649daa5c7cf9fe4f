// Hearth's chat page: lists /v1/models, streams /v1/chat/completions (SSE over fetch), stops with an
// AbortController, and shows tokens per second and the usage the server reports. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "hearth.apiKey";
const history = [];  // {role, content} sent with each question
let controller = null;  // the AbortController of the answer streaming now

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

async function loadModels() {
  const select = $("model");
  const previous = select.value || localStorage.getItem("hearth.model");
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) {
      setStatus(response.status === 401 ? "this server needs an API key: enter it above"
                                        : "cannot list models: " + await errorText(response));
      return;
    }
    // only the models that chat: embedding models (task "embed") serve /v1/embeddings alone
    const models = (await response.json()).data.filter((m) => m.task !== "embed");
    select.replaceChildren(...models.map((m) => {
      const option = new Option(m.id + (m.loaded ? "" : " (loads on first use)"), m.id);
      return option;
    }));
    if (models.some((m) => m.id === previous)) select.value = previous;
    setStatus("ready");
  } catch (e) {
    setStatus("cannot reach the server: " + e.message);
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function note(div, text) {
  const span = document.createElement("span");
  span.className = "note";
  span.textContent = text;
  div.append(span);
}

// Yields the JSON of each `data:` event of an SSE body until `[DONE]`.
async function* events(body) {
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

function rate(tokens, seconds) {
  return seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
}

function showStats(stats, usage) {
  const now = performance.now();
  const decode = stats.first === null ? 0 : (now - stats.first) / 1000;
  const ttft = stats.first === null ? "" : ` · first token ${((stats.first - stats.start) / 1000).toFixed(2)} s`;
  if (usage) {
    $("usage").textContent = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`
      + ` · ${rate(usage.completion_tokens, decode)} tok/s${ttft}`;
  } else {
    $("usage").textContent = `~${stats.chunks} tokens · ${rate(stats.chunks, decode)} tok/s${ttft}`;
  }
}

async function send(question) {
  history.push({ role: "user", content: question });
  bubble("user", question);
  const div = bubble("assistant", "");
  const text = div.querySelector(".text");
  const body = {
    model: $("model").value,
    messages: history,
    stream: true,
    stream_options: { include_usage: true },
  };
  const maxTokens = parseInt($("max-tokens").value, 10);
  if (maxTokens > 0) body.max_tokens = maxTokens;
  const temperature = parseFloat($("temperature").value);
  if (!Number.isNaN(temperature)) body.temperature = temperature;

  controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  setStatus("waiting…");
  $("usage").textContent = "";
  const stats = { start: performance.now(), first: null, chunks: 0 };
  let usage = null;
  let finish = null;
  let failed = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    setStatus("streaming…");
    for await (const chunk of events(response.body)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (stats.first === null) stats.first = performance.now();
          stats.chunks += 1;
          text.textContent += piece;
          div.scrollIntoView({ block: "end" });
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      showStats(stats, usage);
    }
    setStatus(finish === "length" ? "done (max tokens reached)" : "done");
    showStats(stats, usage);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped");
      note(div, "(stopped)");
      showStats(stats, null);
    } else {
      failed = true;
      setStatus("error");
      div.classList.add("error");
      note(div, "error: " + e.message);
    }
  } finally {
    controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    if (failed && !text.textContent) history.pop();  // the question got no answer: forget it
    else history.push({ role: "assistant", content: text.textContent });
  }
}

function init() {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, $("api-key").value.trim());
    loadModels();
  });
  $("model").addEventListener("change", () => localStorage.setItem("hearth.model", $("model").value));
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    history.length = 0;
    $("messages").replaceChildren();
    $("usage").textContent = "";
    setStatus("ready");
  });
  $("ask").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("prompt").value.trim();
    if (!question || controller) return;
    $("prompt").value = "";
    send(question);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  loadModels();
}

init();
