// One message on screen. A user's message is plain text; an assistant's is its reasoning (collapsed),
// its tool calls, its answer as markdown and a note (stopped, error, …), updated in place as it streams.

import { copyButton, renderMarkdown, renderToolCalls } from "./render.js";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, label, onClick) {
  const node = element("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

export class MessageView {
  // actions: {edit(newText), regenerate()}; `last`: the conversation's last message (it may be regenerated).
  constructor(message, actions, last) {
    this.message = message;
    this.node = element("div", "msg " + message.role);
    this.pending = false;
    if (message.role === "user") this.buildUser(actions);
    else this.buildAssistant(actions, last);
    this.update(true);
  }

  buildUser(actions) {
    this.text = element("div", "text");
    this.bar = element("div", "actions");
    this.bar.append(button("edit", "Edit", () => this.startEdit(actions.edit)));
    this.node.append(this.text, this.bar);
  }

  buildAssistant(actions, last) {
    this.reasoning = element("details", "reasoning");
    this.reasoning.append(element("summary", "", "Reasoning"), element("div", "reasoning-text"));
    this.tools = element("div", "tool-calls");
    this.text = element("div", "text markdown");
    this.note = element("div", "note");
    this.bar = element("div", "actions");
    this.bar.append(copyButton("Copy", () => this.message.content));
    if (last) this.bar.append(button("regenerate", "Regenerate", actions.regenerate));
    this.node.append(this.reasoning, this.tools, this.text, this.note, this.bar);
  }

  startEdit(send) {
    const area = element("textarea", "edit");
    area.value = this.message.content;
    area.rows = Math.min(12, area.value.split("\n").length + 1);
    const done = () => { form.replaceWith(this.text); this.bar.hidden = false; };
    const submit = () => { const text = area.value.trim(); if (text) send(text); else done(); };
    const form = element("div", "editing");
    const buttons = element("div", "actions");
    buttons.append(button("resend", "Send", submit), button("cancel", "Cancel", done));
    form.append(area, buttons);
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); submit(); }
      if (event.key === "Escape") { event.stopPropagation(); done(); }
    });
    this.text.replaceWith(form);
    this.bar.hidden = true;
    area.focus();
  }

  // Re-renders from `this.message`; while streaming at most once a frame (`final` false).
  update(final) {
    if (this.message.role === "user") {
      this.text.textContent = this.message.content;
      return;
    }
    if (final) this.paint(true);
    else if (!this.pending) {
      this.pending = true;
      requestAnimationFrame(() => { if (this.pending) this.paint(false); });
    }
  }

  paint(final) {
    this.pending = false;
    const m = this.message;
    this.reasoning.hidden = !m.reasoning;
    this.reasoning.lastChild.textContent = m.reasoning || "";
    this.reasoning.firstChild.textContent = !final && !m.content && m.reasoning ? "Reasoning…" : "Reasoning";
    this.tools.hidden = !(m.toolCalls && m.toolCalls.length);
    if (m.toolCalls) renderToolCalls(this.tools, m.toolCalls);
    renderMarkdown(this.text, m.content, final);
    this.node.classList.toggle("error", Boolean(m.error));
    this.note.textContent = m.error ? "error: " + m.error : (m.note || "");
    this.note.hidden = !this.note.textContent;
  }

  scrollIntoView() {
    this.node.scrollIntoView({ block: "end" });
  }
}
