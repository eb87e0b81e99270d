// Model text as Markdown: markdown-it parses it with raw HTML off, DOMPurify keeps only the tags and
// attributes Markdown produces, and the result is decorated with DOM calls (code headers, table
// scrolling). Both libraries are vendored (static/beautyai/vendor/) and loaded by the page before
// this module, so no text is rendered before the sanitizer exists.
const { markdownit, DOMPurify } = window;
const gettext = window.gettext || ((text) => text);

// http(s), mailto, or a URL with no scheme at all (relative): javascript:, data:, vbscript:, file:
// and anything else with a scheme before the first / ? # is refused.
const SAFE_URL = /^(?:(?:https?|mailto):|[^:/?#]*(?:[/?#]|$))/i;

const md = markdownit({ html: false, linkify: true, breaks: true });
md.validateLink = (url) => SAFE_URL.test(url.trim());
// An image would be fetched as soon as it renders: a prompt-injected reply could send the chat to
// any server in its URL. `![alt](url)` stays a link the user may choose to follow.
md.disable("image");
// Column alignment comes as style="text-align:…", and the sanitizer drops every style: a class carries it.
md.core.ruler.push("align_class", (state) => {
  for (const token of state.tokens) {
    const align = /^text-align:(left|center|right)$/.exec(token.attrGet("style") || "");
    if (!align) continue;
    token.attrs = token.attrs.filter(([name]) => name !== "style");
    token.attrJoin("class", `align-${align[1]}`);
  }
});

const purify = DOMPurify(window); // an instance of our own, so the hooks below stay local to it
const SANITIZE = {
  ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
                 "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"],
  ALLOWED_ATTR: ["class", "href", "start", "title"],
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};
purify.addHook("uponSanitizeAttribute", (node, data) => {
  // Our only classes: a fence's `language-…` on <code> (the header shows it) and a column's alignment.
  if (data.attrName === "class") {
    data.keepAttr = node.nodeName === "CODE" ? /^language-\S+$/.test(data.attrValue)
      : ["TH", "TD"].includes(node.nodeName) && /^align-(left|center|right)$/.test(data.attrValue);
  }
});
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A" && node.hasAttribute("href")) {
    // A new tab keeps the chat (and a reply still streaming) open; noopener keeps the page unreachable
    // from the link's window, noreferrer keeps the chat's address out of the other server's logs.
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

function codeBlock(pre) {
  const code = pre.querySelector("code");
  const figure = document.createElement("div");
  figure.className = "code-block";
  const header = document.createElement("div");
  header.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = (code?.className || "").replace(/^language-/, "");
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "small copy";
  copy.textContent = gettext("Copy");
  // With a dir of their own, neither decides the direction of a dir="auto" reply that opens with code.
  label.dir = "ltr";
  copy.dir = "auto";
  header.append(label, copy);
  pre.dir = "ltr"; // code reads left to right even inside a right-to-left reply
  pre.replaceWith(figure);
  figure.append(header, pre);
}

// Markdown's HTML as sanitized nodes, with code blocks and tables dressed for the chat.
function toNodes(html) {
  const fragment = purify.sanitize(html, SANITIZE);
  fragment.querySelectorAll("pre").forEach(codeBlock);
  fragment.querySelectorAll(":not(pre) > code").forEach((code) => { code.dir = "ltr"; });
  fragment.querySelectorAll("table").forEach((table) => {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    table.replaceWith(wrap);
    wrap.append(table);
  });
  return [...fragment.childNodes];
}

// The token ranges [start, end) of the top-level blocks, each with the source line it starts on.
function topLevelBlocks(tokens) {
  const blocks = [];
  let start = 0;
  let depth = 0;
  tokens.forEach((token, index) => {
    if (depth === 0) start = index;
    depth += token.nesting;
    if (depth === 0) blocks.push({ start, end: index + 1, line: tokens[start].map[0] });
  });
  return blocks;
}

export function renderMarkdown(target, source) {
  target.replaceChildren(...toNodes(md.render(source)));
}

// A reply that grows token by token. Blocks that can no longer change are rendered once and left
// alone ("settled"); only the blocks after them (the "tail") are rendered again, at most once a frame.
// A block is settled once the next block starts on a complete line: CommonMark closes a block only
// when a later line starts another, and a complete line cannot change any more. (A block followed
// only by a partial line may still absorb it: "text\n***" is a paragraph and a rule, "text\n***x" one
// paragraph.)
export function streamMarkdown(target) {
  let source = "";
  let settled = 0; // blocks rendered for good
  let tail = []; // the nodes of the blocks after them
  let frame = 0;

  function flush() {
    cancelAnimationFrame(frame);
    frame = 0;
    const env = {};
    const tokens = md.parse(source, env);
    const blocks = topLevelBlocks(tokens);
    const completeLines = source.split("\n").length - 1;
    let settle = settled;
    while (settle + 1 < blocks.length && blocks[settle + 1].line < completeLines) settle += 1;
    const render = (from, to) => from < to
      ? toNodes(md.renderer.render(tokens.slice(blocks[from].start, blocks[to - 1].end), md.options, env))
      : [];
    tail.forEach((node) => node.remove());
    target.append(...render(settled, settle));
    tail = render(settle, blocks.length);
    target.append(...tail);
    settled = settle;
    return env;
  }

  return {
    append(text) {
      source += text;
      if (!frame) frame = requestAnimationFrame(flush);
    },
    flush,
    // The whole reply as the server stored it: usually what arrived, but a reply whose reasoning never
    // closed is stored as all answer, so a different text replaces what was shown.
    finish(final = source) {
      if (final !== source) {
        source = final;
        cancelAnimationFrame(frame);
        renderMarkdown(target, source);
        return;
      }
      // A reference definition ([id]: url) applies to the whole text, blocks settled before it included.
      if (Object.keys(flush().references || {}).length) renderMarkdown(target, source);
    },
  };
}

// One listener for every Copy button, present and future: tail blocks are re-rendered while a reply
// streams, and a listener on each button would be lost with it.
document.addEventListener("click", async (event) => {
  const button = event.target.closest(".code-block .copy");
  if (!button) return;
  const code = button.closest(".code-block").querySelector("pre");
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = gettext("Copied");
  } catch {
    // No clipboard API outside a secure context (plain http to another host): copy the selection, and
    // leave the code selected so the user can copy it by hand if even that is refused.
    window.getSelection().selectAllChildren(code);
    button.textContent = document.execCommand("copy") ? gettext("Copied") : gettext("Copy failed");
  }
  setTimeout(() => { button.textContent = gettext("Copy"); }, 1500);
});
