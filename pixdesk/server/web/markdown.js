// Markdown -> DOM for model answers. Model output is untrusted (SECURITY.md row 31), so this never builds
// HTML strings: every node is made with createElement / createTextNode, raw HTML in the answer stays text,
// and links are kept only for absolute http(s) URLs. A streaming answer is re-rendered whole on each update,
// so an unclosed code fence simply runs to the end of the text until its closing fence arrives.
//
// Supported: ``` / ~~~ fences, # headings, paragraphs (a single newline is a line break), > quotes,
// - * + and 1. lists (nested by indentation), GFM pipe tables, --- rules, `code`, **bold**, *em*, ~~del~~,
// [text](url), <https://...> and bare https:// URLs, backslash escapes. Images become links, never loads.

const MAX_DEPTH = 12; // nesting of quotes, lists and emphasis; deeper input renders as plain text
const PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

// Patterns are written to run in linear time on hostile lines (no two adjacent quantifiers over the same
// characters); fence info strings and closing #s of headings are handled in code for the same reason.
const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*))?$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*)|$)/;
const TABLE_DELIM = /^ *\|? *:?-+:?(?: *\| *:?-+:?)*(?: *\|)? *$/;
// Sticky (/y) patterns match at lastIndex without copying the rest of the text.
// A link destination and title, matched after "(" and any spaces.
const DEST = /(<[^<>\n]*>|(?:[^\s()\\]|\\.|\([^\s()]*\))*)(?:\s+("[^"]*"|'[^']*'))?\s*\)/y;
const ANGLE = /<(https?:\/\/[^\s<>]+)>/iy;
const BARE = /https?:\/\/[^\s<>"'`]+/iy;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** An absolute http(s) URL, normalised, or null (javascript:, data:, relative paths and junk are refused). */
export function safeUrl(raw) {
  try {
    const url = new URL(String(raw).trim());
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** A safe external link; the label is rendered by the caller. */
export function externalLink(href) {
  const a = el("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  a.title = href;
  return a;
}

// ------------------------------------------------------------------------------------------------ blocks

export function renderMarkdown(text) {
  const root = document.createDocumentFragment();
  blocks(String(text).replace(/\r\n?/g, "\n").split("\n"), root, 0);
  return root;
}

function startsBlock(line, next) {
  return (
    fenceOpen(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    ITEM.test(line) || isTableStart(line, next)
  );
}

function blocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = fenceOpen(line))) {
      i = fence(lines, i, m, parent);
    } else if ((m = HEADING.exec(line))) {
      const h = el("h" + m[1].length);
      inline(headingText(m[2] || ""), h, depth);
      parent.append(h);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (depth >= MAX_DEPTH) {
      parent.append(el("p", null, lines.slice(i).join("\n")));
      return;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
      const q = el("blockquote");
      blocks(inner, q, depth + 1);
      parent.append(q);
    } else if (ITEM.test(line)) {
      i = list(lines, i, parent, depth);
    } else if (isTableStart(line, lines[i + 1])) {
      i = table(lines, i, parent, depth);
    } else {
      const para = [line];
      i++;
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) {
        para.push(lines[i++]);
      }
      const p = el("p");
      inline(para.map((l) => l.trim()).join("\n"), p, depth);
      parent.append(p);
    }
  }
}

/** [mark, info word] of an opening fence line, or null (a ``` fence's info may not hold a backtick). */
function fenceOpen(line) {
  const m = FENCE.exec(line);
  if (!m || (m[1][0] === "`" && m[2].includes("`"))) return null;
  return [m[1], m[2].trim().split(/\s+/)[0]];
}

function headingText(raw) {
  const t = raw.trimEnd();
  let k = t.length;
  while (k > 0 && t[k - 1] === "#") k--;
  return k < t.length && (k === 0 || t[k - 1] === " " || t[k - 1] === "\t") ? t.slice(0, k).trimEnd() : t;
}

function fence(lines, i, m, parent) {
  const [mark, lang] = m;
  const close = new RegExp(`^ {0,3}${mark[0] === "`" ? "`" : "~"}{${mark.length},}[ \\t]*$`);
  const body = [];
  let closed = false;
  for (i++; i < lines.length; i++) {
    if (close.test(lines[i])) {
      closed = true;
      i++;
      break;
    }
    body.push(lines[i]);
  }
  parent.append(codeBlock(body.join("\n"), lang, closed));
  return i;
}

/** A code block with a language label and a Copy button (app.js handles clicks on `.copy-code`). */
export function codeBlock(code, lang, closed = true) {
  const box = el("div", "code-block");
  const head = el("div", "code-head");
  head.append(el("span", "code-lang", lang || "text"));
  const copy = el("button", "copy-code", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", `Copy ${lang || "code"} to the clipboard`);
  head.append(copy);
  const pre = el("pre");
  const codeEl = el("code", null, code);
  if (lang) codeEl.dataset.lang = lang;
  pre.append(codeEl);
  pre.tabIndex = 0; // long lines scroll: keyboard users need to reach the scroller
  box.append(head, pre);
  if (!closed) box.classList.add("open");
  return box;
}

function list(lines, i, parent, depth) {
  const first = ITEM.exec(lines[i]);
  const base = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  const items = [];
  let item = null;
  while (i < lines.length) {
    const line = lines[i];
    const m = ITEM.exec(line);
    const indent = line.length - line.trimStart().length;
    if (m && indent <= base + 1 && /\d/.test(m[2]) === ordered && !RULE.test(line)) {
      item = { li: el("li"), lines: [m[3] || ""], pad: m[1].length + m[2].length + 1 };
      items.push(item);
      i++;
    } else if (!line.trim()) {
      const next = lines.slice(i + 1).find((l) => l.trim());
      const nextIndent = next === undefined ? 0 : next.length - next.trimStart().length;
      if (next === undefined || nextIndent <= base) break;
      item.lines.push("");
      i++;
    } else if (indent > base) {
      item.lines.push(line.slice(Math.min(indent, item.pad)));
      i++;
    } else if (!startsBlock(line, lines[i + 1]) && item.lines[item.lines.length - 1].trim()) {
      item.lines.push(line.trim()); // lazy continuation of the item's paragraph
      i++;
    } else {
      break;
    }
  }
  for (const it of items) {
    blocks(it.lines, it.li, depth + 1);
    node.append(it.li);
  }
  parent.append(node);
  return i;
}

function isTableStart(line, next) {
  return next !== undefined && line.includes("|") && next.includes("-") && next.includes("|") &&
    TABLE_DELIM.test(next);
}

function cells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  return s.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
}

function table(lines, i, parent, depth) {
  const head = cells(lines[i]);
  const aligns = cells(lines[i + 1]).map((c) =>
    c.startsWith(":") ? (c.endsWith(":") ? "center" : "left") : c.endsWith(":") ? "right" : "",
  );
  const wrap = el("div", "table-wrap");
  wrap.tabIndex = 0;
  const t = el("table");
  const row = (values, tag) => {
    const tr = el("tr");
    head.forEach((_, k) => {
      const cell = el(tag);
      if (aligns[k]) cell.className = "align-" + aligns[k];
      inline(values[k] || "", cell, depth + 1);
      tr.append(cell);
    });
    return tr;
  };
  t.append(el("thead"));
  t.tHead.append(row(head, "th"));
  const body = el("tbody");
  for (i += 2; i < lines.length && lines[i].trim() && lines[i].includes("|"); i++) {
    body.append(row(cells(lines[i]), "td"));
  }
  t.append(body);
  wrap.append(t);
  parent.append(wrap);
  return i;
}

// ------------------------------------------------------------------------------------------------ inline

// Delimiter searches are indexed once per text (`scan`), so hostile input such as "_a " x 5000 or
// "[" x 5000 renders in linear-ish time instead of rescanning the rest of the text at every opener.
function inline(text, parent, depth, noLinks = false) {
  const scan = { closers: new Map(), brackets: null, noTicks: new Map() };
  let buf = "";
  const flush = () => {
    if (buf) parent.append(document.createTextNode(buf));
    buf = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    let hit = null;
    if (c === "\\" && PUNCT.includes(text[i + 1] || "x")) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "\n") {
      flush();
      parent.append(el("br"));
      i++;
      continue;
    }
    if (c === "`") hit = codeSpan(text, i, scan);
    else if (depth < MAX_DEPTH) {
      if (!noLinks && (c === "[" || (c === "!" && text[i + 1] === "["))) hit = link(text, i, depth, scan);
      else if (!noLinks && c === "<") hit = angleLink(text, i);
      else if (!noLinks && (c === "h" || c === "H") && !/[\w/]/.test(text[i - 1] || "")) {
        hit = bareLink(text, i);
      }
      else if (c === "*" || c === "_" || c === "~") hit = emphasis(text, i, depth, noLinks, scan);
    }
    if (hit) {
      flush();
      parent.append(hit.node);
      i = hit.end;
    } else {
      buf += c;
      i++;
    }
  }
  flush();
}

function codeSpan(text, i, scan) {
  let n = 0;
  while (text[i + n] === "`") n++;
  const literal = { node: document.createTextNode("`".repeat(n)), end: i + n };
  if (scan.noTicks.get(n) <= i) return literal; // an earlier search for this run length found no closer
  const re = new RegExp(`(?<!\`)\`{${n}}(?!\`)`, "g");
  re.lastIndex = i + n;
  const m = re.exec(text);
  if (!m) {
    scan.noTicks.set(n, i);
    return literal;
  }
  let code = text.slice(i + n, m.index).replace(/\n/g, " ");
  if (code.length > 2 && code.startsWith(" ") && code.endsWith(" ")) code = code.slice(1, -1);
  return { node: el("code", null, code), end: m.index + n };
}

function link(text, i, depth, scan) {
  const image = text[i] === "!";
  const open = image ? i + 1 : i;
  if (!scan.brackets) scan.brackets = matchBrackets(text);
  const close = scan.brackets.get(open) ?? -1;
  if (close < 0 || text[close + 1] !== "(") return null;
  let start = close + 2;
  while (/\s/.test(text[start] || "")) start++;
  DEST.lastIndex = start;
  const dest = DEST.exec(text);
  if (!dest) return null;
  const label = text.slice(open + 1, close);
  const href = safeUrl(dest[1].replace(/^<|>$/g, "").replace(/\\(.)/g, "$1"));
  const end = start + dest[0].length;
  let node;
  if (href) {
    node = externalLink(href);
    if (image) node.append(document.createTextNode(`image: ${label || href}`));
    else inline(label, node, depth + 1, true);
  } else {
    node = el("span", "blocked-link"); // not an http(s) link: keep the words, drop the target
    node.title = "link removed: only http(s) links are shown";
    inline(image ? `image: ${label}` : label, node, depth + 1, true);
  }
  return { node, end };
}

/** Each "[" -> the index of its matching "]" (backslash escapes skipped), in one pass. */
function matchBrackets(text) {
  const pairs = new Map();
  const stack = [];
  for (let k = 0; k < text.length; k++) {
    if (text[k] === "\\") k++;
    else if (text[k] === "[") stack.push(k);
    else if (text[k] === "]" && stack.length) pairs.set(stack.pop(), k);
  }
  return pairs;
}

function angleLink(text, i) {
  ANGLE.lastIndex = i;
  const m = ANGLE.exec(text);
  const href = m && safeUrl(m[1]);
  if (!href) return null;
  const a = externalLink(href);
  a.textContent = m[1];
  return { node: a, end: i + m[0].length };
}

function bareLink(text, i) {
  BARE.lastIndex = i;
  const m = BARE.exec(text);
  if (!m) return null;
  let url = m[0].replace(/[.,;:!?*_~]+$/, "");
  while (url.endsWith(")") && url.split("(").length < url.split(")").length) url = url.slice(0, -1);
  const href = safeUrl(url);
  if (!href) return null;
  const a = externalLink(href);
  a.textContent = url;
  return { node: a, end: i + url.length };
}

const EMPHASIS = [["**", "strong"], ["__", "strong"], ["~~", "del"], ["*", "em"], ["_", "em"]];

function emphasis(text, i, depth, noLinks, scan) {
  for (const [mark, tag] of EMPHASIS) {
    if (!text.startsWith(mark, i)) continue;
    const after = text[i + mark.length];
    if (!after || /\s/.test(after) || (mark[0] === "_" && /\w/.test(text[i - 1] || ""))) return null;
    if (!scan.closers.has(mark)) scan.closers.set(mark, closers(text, mark));
    const k = firstAtLeast(scan.closers.get(mark), i + mark.length + 1);
    if (k < 0) return null;
    const node = el(tag);
    inline(text.slice(i + mark.length, k), node, depth + 1, noLinks);
    return { node, end: k + mark.length };
  }
  return null;
}

/** Positions where `mark` can close emphasis: after a non-space, not inside a longer run, and for "_"
 *  not followed by a word character (snake_case stays text). Ascending. */
function closers(text, mark) {
  const out = [];
  for (let k = text.indexOf(mark, 1); k > 0; k = text.indexOf(mark, k + 1)) {
    if (/\s/.test(text[k - 1])) continue;
    if (mark.length === 1 && (text[k + 1] === mark || text[k - 1] === mark)) continue;
    if (mark[0] === "_" && /\w/.test(text[k + mark.length] || "")) continue;
    out.push(k);
  }
  return out;
}

function firstAtLeast(sorted, min) {
  let [lo, hi] = [0, sorted.length];
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < min) lo = mid + 1;
    else hi = mid;
  }
  return lo < sorted.length ? sorted[lo] : -1;
}

// ---------------------------------------------------------------------------------------- HTML answers

/** The HTML document in an answer (an ```html fence holding a document, or a bare document), or null. */
export function findHtmlDocument(text) {
  const fences = [...String(text).matchAll(/```[^\n]*\n([\s\S]*?)(?:```|$)/g)];
  const isDoc = (s) => /<!doctype html|<html[\s>]|<body[\s>]/i.test(s);
  const found = fences.map((m) => m[1]).find(isDoc);
  if (found) return found.trim();
  const bare = String(text).trim();
  return /^(<!doctype html|<html[\s>])/i.test(bare) ? bare : null;
}
