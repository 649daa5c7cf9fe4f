// Model output to the page, safely: markdown by marked, any raw HTML in it shown as text, the result
// sanitised by DOMPurify all the same (links such as `javascript:` go), code highlighted by highlight.js
// with a copy button. The libraries are the globals of the vendored scripts in static/vendor/.

const escapeHtml = (text) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

const markdown = new globalThis.marked.Marked({
  gfm: true,
  renderer: {
    // HTML written by the model is text to show, never markup.
    html(token) {
      const text = escapeHtml(token.text);
      return token.block ? `<p>${text}</p>` : text;
    },
  },
});

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) {
    // No clipboard API (plain http on a LAN) or no permission: the old way.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied;
  }
}

export function copyButton(label, text) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = label;
  button.addEventListener("click", async () => {
    const copied = await copyText(text());
    button.textContent = copied ? "Copied" : "Copy failed";
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

function decorate(code, final) {
  const language = [...code.classList].find((c) => c.startsWith("language-"))?.slice(9) || "";
  const hljs = globalThis.hljs;
  if (language && hljs.getLanguage(language)) hljs.highlightElement(code);
  else if (!language && final) {
    const result = hljs.highlightAuto(code.textContent);
    code.innerHTML = result.value;  // highlight.js escapes the text it wraps in its spans
    code.classList.add("hljs");
  }
  const pre = code.parentElement;
  const block = document.createElement("div");
  block.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const name = document.createElement("span");
  name.textContent = language || "code";
  head.append(name, copyButton("Copy", () => code.textContent));
  pre.replaceWith(block);
  block.append(head, pre);
}

// Renders `text` (markdown from a model) into `target`. `final`: the answer is complete (costlier
// work such as guessing the language of an unlabelled code block is done then only).
export function renderMarkdown(target, text, final) {
  const html = markdown.parse(text);
  target.innerHTML = globalThis.DOMPurify.sanitize(html, { USE_PROFILE: { html: true } });
  for (const code of target.querySelectorAll("pre > code")) decorate(code, final);
}

// Tool calls [{id, name, arguments}] as blocks: the function's name and its arguments (pretty JSON).
export function renderToolCalls(target, toolCalls) {
  target.replaceChildren(...toolCalls.map((call) => {
    const block = document.createElement("div");
    block.className = "tool-call";
    const head = document.createElement("div");
    head.className = "tool-name";
    head.textContent = "tool call: " + (call.name || "…");
    const args = document.createElement("pre");
    try {
      args.textContent = JSON.stringify(JSON.parse(call.arguments), null, 2);
    } catch (e) {
      args.textContent = call.arguments;  // still streaming, or not JSON
    }
    block.append(head, args);
    return block;
  }));
}
