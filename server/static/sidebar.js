// The conversation list: each conversation, to open (click), rename (double-click or ✎; Enter keeps,
// Esc cancels) or delete (✕, then again within 3 s to confirm), newest first.

import { titleOf } from "./store.js";

function smallButton(className, label, title, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.className = className;
  node.textContent = label;
  node.title = title;
  node.setAttribute("aria-label", title);
  node.addEventListener("click", onClick);
  return node;
}

export class Sidebar {
  constructor(store, list, open, remove) {
    this.store = store;
    this.list = list;
    this.open = open;
    this.remove = remove;
  }

  show() {
    const current = this.store.currentId;
    this.list.replaceChildren(...this.store.list().map((conversation) => {
      const item = document.createElement("li");
      item.dataset.id = conversation.id;
      if (conversation.id === current) item.className = "current";
      const open = smallButton("open", titleOf(conversation), titleOf(conversation), () => this.open(conversation.id));
      open.removeAttribute("aria-label");
      open.addEventListener("dblclick", () => this.rename(item, conversation));
      const rename = smallButton("rename", "✎", "rename", () => this.rename(item, conversation));
      const remove = smallButton("delete", "✕", "delete", () => {
        if (remove.classList.contains("confirm")) return this.remove(conversation.id);
        remove.classList.add("confirm");
        remove.textContent = "Delete?";
        setTimeout(() => { remove.classList.remove("confirm"); remove.textContent = "✕"; }, 3000);
      });
      item.append(open, rename, remove);
      return item;
    }));
  }

  rename(item, conversation) {
    const input = document.createElement("input");
    input.className = "rename-input";
    input.setAttribute("aria-label", "title");
    input.value = titleOf(conversation);
    let finished = false;
    const finish = (keep) => {
      if (finished) return;
      finished = true;
      if (keep) this.store.rename(conversation.id, input.value);
      this.show();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") { event.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
    item.replaceChildren(input);
    input.focus();
    input.select();
  }
}
