// Conversations kept in the browser's localStorage, under one key as a JSON list:
// {id, title, system, extra, model, updated, messages: [{role, content, reasoning?, toolCalls?, note?, error?}]}.
// `hearth.current` holds the id of the conversation on screen.

const LIST_KEY = "hearth.conversations";
const CURRENT_KEY = "hearth.current";

function newId() {
  // crypto.randomUUID needs a secure context, and the page may be served over plain http on a LAN.
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

function readList() {
  try {
    const list = JSON.parse(localStorage.getItem(LIST_KEY) || "[]");
    return Array.isArray(list) ? list.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages)) : [];
  } catch (e) {
    return [];
  }
}

export function titleOf(conversation) {
  if (conversation.title) return conversation.title;
  const first = conversation.messages.find((m) => m.role === "user");
  if (!first) return "New chat";
  const line = first.content.trim().split("\n")[0];
  return line.length > 40 ? line.slice(0, 40) + "…" : line;
}

export class Store {
  constructor() {
    this.conversations = readList();
    const wanted = localStorage.getItem(CURRENT_KEY);
    this.currentId = this.conversations.some((c) => c.id === wanted) ? wanted : null;
    if (!this.currentId && this.conversations.length) this.select(this.list()[0].id);  // the newest
    if (!this.currentId) this.create();
  }

  // Newest first.
  list() {
    return [...this.conversations].sort((a, b) => b.updated - a.updated);
  }

  current() {
    return this.conversations.find((c) => c.id === this.currentId);
  }

  create() {
    const conversation = { id: newId(), title: "", system: "", extra: "", model: "", updated: Date.now(), messages: [] };
    this.conversations.push(conversation);
    this.select(conversation.id);
    return conversation;
  }

  select(id) {
    this.currentId = id;
    localStorage.setItem(CURRENT_KEY, id);
    this.save();
  }

  rename(id, title) {
    const conversation = this.conversations.find((c) => c.id === id);
    if (conversation) conversation.title = title.trim();
    this.save();
  }

  remove(id) {
    this.conversations = this.conversations.filter((c) => c.id !== id);
    if (id === this.currentId) {
      const next = this.list()[0];
      if (next) this.select(next.id);
      else this.create();
    }
    this.save();
  }

  touch(conversation) {
    conversation.updated = Date.now();
    this.save();
  }

  // Empty conversations other than the one on screen are not kept.
  save() {
    const kept = this.conversations.filter((c) => c.messages.length || c.id === this.currentId || c.system);
    try {
      localStorage.setItem(LIST_KEY, JSON.stringify(kept));
      return null;
    } catch (e) {
      return "cannot keep the conversations in this browser: " + e.message;
    }
  }
}
