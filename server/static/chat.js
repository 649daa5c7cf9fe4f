// Hearth's chat page: lists /v1/models (which are loaded), streams /v1/chat/completions (SSE over fetch)
// into conversations kept in the browser, stops with an AbortController, shows tokens per second and
// the usage the server reports. ES modules, no build step; see store.js, sidebar.js, stream.js, view.js, render.js.

import { Store } from "./store.js";
import { applyDelta, errorText, events, rate } from "./stream.js";
import { Sidebar } from "./sidebar.js";
import { MessageView } from "./view.js";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "hearth.apiKey";
const NARROW = window.matchMedia("(max-width: 720px)");

class ChatPage {
  constructor() {
    this.store = new Store();
    this.loaded = new Map();  // model id -> loaded now (from /v1/models)
    this.controller = null;  // the AbortController of the answer streaming now
    this.sidebar = new Sidebar(this.store, $("conversations"), (id) => this.open(id), (id) => this.remove(id));
  }

  headers() {
    const h = { "content-type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) h.authorization = "Bearer " + key;
    return h;
  }

  setStatus(text) { $("status").textContent = text; }

  persist(conversation) {
    const problem = conversation ? this.store.touch(conversation) : this.store.save();
    if (problem) this.setStatus(problem);
  }

  async loadModels() {
    const select = $("model");
    const previous = select.value || localStorage.getItem("hearth.model");
    try {
      const response = await fetch("/v1/models", { headers: this.headers() });
      if (!response.ok) {
        this.setStatus(response.status === 401 ? "this server needs an API key: enter it above"
                                                : "cannot list models: " + await errorText(response));
        return;
      }
      // only the models that chat: embedding models (task "embed") serve /v1/embeddings alone
      const models = (await response.json()).data.filter((m) => m.task !== "embed");
      this.loaded = new Map(models.map((m) => [m.id, m.loaded !== false]));
      select.replaceChildren(...models.map((m) =>
        new Option(m.id + (m.loaded === false ? " (loads on first use)" : " · loaded"), m.id)));
      if (models.some((m) => m.id === previous)) select.value = previous;
      if (!this.controller) this.setStatus("ready");
    } catch (e) {
      this.setStatus("cannot reach the server: " + e.message);
    }
  }

  remove(id) {
    if (id === this.store.currentId) this.stop();
    this.store.remove(id);
    this.showConversation();
  }

  open(id) {
    if (id !== this.store.currentId) {
      this.stop();  // an answer streams into the conversation on screen only
      this.store.select(id);
      this.showConversation();
    }
    document.body.classList.remove("show-sidebar");
    $("prompt").focus();
  }

  newChat() {
    const current = this.store.current();
    if (current && current.messages.length === 0) return $("prompt").focus();
    this.stop();
    this.store.create();
    this.showConversation();
    $("prompt").focus();
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  showConversation() {
    const conversation = this.store.current();
    $("system").value = conversation.system || "";
    $("extra").value = conversation.extra || "";
    $("settings").open = Boolean(conversation.system || conversation.extra);
    if (conversation.model && this.loaded.has(conversation.model)) $("model").value = conversation.model;
    const messages = conversation.messages;
    this.views = messages.map((message, i) => new MessageView(message, {
      edit: (text) => this.resend(conversation, i, text),
      regenerate: () => this.regenerate(conversation),
    }, i === messages.length - 1));
    $("messages").replaceChildren(...this.views.map((v) => v.node));
    if (this.views.length) this.views[this.views.length - 1].scrollIntoView();
    $("usage").textContent = "";
    this.sidebar.show();
  }

  ask(question) {
    const conversation = this.store.current();
    conversation.messages.push({ role: "user", content: question });
    this.generate(conversation);
  }

  resend(conversation, index, text) {
    if (this.controller) return;
    conversation.messages.splice(index);
    conversation.messages.push({ role: "user", content: text });
    this.generate(conversation);
  }

  regenerate(conversation) {
    if (this.controller) return;
    const messages = conversation.messages;
    if (messages.length && messages[messages.length - 1].role === "assistant") messages.pop();
    if (messages.length) this.generate(conversation);
  }

  // The request body: the settings on screen, the conversation, and its extra fields (JSON) on top.
  body(conversation) {
    const messages = [];
    if ((conversation.system || "").trim()) messages.push({ role: "system", content: conversation.system });
    for (const m of conversation.messages) {
      if (m.role === "user" || m.content) messages.push({ role: m.role, content: m.content });
    }
    const body = { model: $("model").value, messages, stream: true, stream_options: { include_usage: true } };
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const temperature = parseFloat($("temperature").value);
    if (!Number.isNaN(temperature)) body.temperature = temperature;
    if ((conversation.extra || "").trim()) {
      let extra;
      try {
        extra = JSON.parse(conversation.extra);
      } catch (e) {
        throw new Error("the extra request fields are not valid JSON: " + e.message);
      }
      if (typeof extra !== "object" || extra === null || Array.isArray(extra)) {
        throw new Error("the extra request fields must be a JSON object");
      }
      Object.assign(body, extra, { messages, stream: true });
    }
    return body;
  }

  showStats(stats, usage) {
    const decode = stats.first === null ? 0 : (performance.now() - stats.first) / 1000;
    const ttft = stats.first === null ? "" : ` · first token ${((stats.first - stats.start) / 1000).toFixed(2)} s`;
    $("usage").textContent = usage
      ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`
        + ` · ${rate(usage.completion_tokens, decode)} tok/s${ttft}`
      : `~${stats.chunks} tokens · ${rate(stats.chunks, decode)} tok/s${ttft}`;
  }

  // Streams an answer to the conversation's last message into a new assistant message.
  async generate(conversation) {
    const answer = { role: "assistant", content: "" };
    let body;
    try {
      body = this.body(conversation);
    } catch (e) {
      answer.error = e.message;
    }
    conversation.model = $("model").value;
    conversation.messages.push(answer);
    this.persist(conversation);
    this.showConversation();
    const view = this.views[this.views.length - 1];
    if (answer.error) return this.setStatus("error");

    const controller = (this.controller = new AbortController());
    document.body.classList.add("busy");
    $("send").disabled = true;
    $("stop").disabled = false;
    const model = body.model;
    this.setStatus(this.loaded.get(model) === false
      ? `loading ${model}… (its first request waits for the load)` : "waiting…");
    const stats = { start: performance.now(), first: null, chunks: 0 };
    let usage = null;
    let finish = null;
    let saved = performance.now();
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: this.headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      this.setStatus("streaming…");
      for await (const chunk of events(response.body)) {
        if (chunk.error) throw new Error("the server stopped with an error: " + chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && applyDelta(answer, choice.delta)) {
            if (stats.first === null) stats.first = performance.now();
            stats.chunks += 1;
            view.update(false);
            view.scrollIntoView();
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        this.showStats(stats, usage);
        if (performance.now() - saved > 1000) { this.persist(conversation); saved = performance.now(); }
      }
      if (finish === "length") answer.note = "(max tokens reached)";
      this.setStatus(finish === "length" ? "done (max tokens reached)" : "done");
      this.showStats(stats, usage);
    } catch (e) {
      if (e.name === "AbortError") {
        answer.note = "(stopped)";
        this.setStatus("stopped");
        this.showStats(stats, null);
      } else {
        answer.error = e instanceof TypeError ? "cannot reach the server (" + e.message + ")" : e.message;
        this.setStatus("error");
      }
    } finally {
      this.controller = null;
      document.body.classList.remove("busy");
      $("send").disabled = false;
      $("stop").disabled = true;
      view.update(true);
      this.persist(conversation);
      if (this.loaded.get(model) === false) this.loadModels();  // it is loaded now
    }
  }

  init() {
    $("api-key").value = localStorage.getItem(KEY_STORE) || "";
    $("api-key").addEventListener("change", () => {
      localStorage.setItem(KEY_STORE, $("api-key").value.trim());
      this.loadModels();
    });
    $("model").addEventListener("change", () => localStorage.setItem("hearth.model", $("model").value));
    $("stop").addEventListener("click", () => this.stop());
    $("new-chat").addEventListener("click", () => this.newChat());
    $("toggle-sidebar").addEventListener("click", () =>
      document.body.classList.toggle(NARROW.matches ? "show-sidebar" : "hide-sidebar"));
    for (const [id, field] of [["system", "system"], ["extra", "extra"]]) {
      $(id).addEventListener("input", () => {
        this.store.current()[field] = $(id).value;
        this.persist(null);
      });
    }
    $("ask").addEventListener("submit", (event) => {
      event.preventDefault();
      const question = $("prompt").value.trim();
      if (!question || this.controller) return;
      $("prompt").value = "";
      this.ask(question);
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("ask").requestSubmit();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.controller) this.stop();
    });
    this.showConversation();
    this.loadModels().then(() => {
      const conversation = this.store.current();
      if (conversation.model && this.loaded.has(conversation.model)) $("model").value = conversation.model;
    });
  }
}

new ChatPage().init();
