/* Kefu chat widget. One tag on any page:
 *   <script src="https://HOST/widget.js" data-site="KEY" data-lang="en|zh"
 *           data-color="#0a7d5a" data-theme="auto|light|dark"></script>
 * Plain JavaScript, no build step. Talks to the Kefu server the script came from; keeps the
 * conversation (id and customer token) in localStorage across page loads. Everything it draws
 * lives in a shadow root: the page's styles do not reach in, and its own do not leak out.
 * Answers and agents' replies are rendered as a small Markdown subset built from DOM nodes
 * (never innerHTML of message text). New messages, take-over and hand-back arrive over one
 * event stream per conversation, which resumes after the last message it delivered. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__kefuWidget) return;
  window.__kefuWidget = true;
  var base = new URL(script.src, location.href).origin;
  var site = script.getAttribute("data-site") || "";
  var lang = (script.getAttribute("data-lang") || document.documentElement.lang || navigator.language || "en")
    .toLowerCase().indexOf("zh") === 0 ? "zh" : "en";
  var theme = script.getAttribute("data-theme");
  theme = theme === "light" || theme === "dark" ? theme : "auto";
  /* The brand colour: any CSS colour the browser accepts; anything else keeps the default. */
  var color = script.getAttribute("data-color");
  if (color && !(window.CSS && CSS.supports && CSS.supports("color", color))) color = null;
  var T = {
    en: {
      open: "Chat with us", close: "Close chat", title: "Support", placeholder: "Ask a question…",
      send: "Send", stop: "Stop", stopped: "Stopped", fresh: "New conversation", copy: "Copy",
      copied: "Copied", up: "Helpful", down: "Not helpful", regenerate: "Try again",
      human: "Talk to a human", sources: "Sources", why: "What was wrong?", wrong: "Wrong",
      incomplete: "Incomplete", irrelevant: "Off topic", other: "Other", comment: "Tell us more (optional)",
      submit: "Send feedback", thanks: "Thanks for the feedback.", unavailable:
      "Chat is unavailable on this page right now.", waiting: "A person will join the conversation shortly.",
      joined: "A support agent has joined the conversation.", back: "You are chatting with the assistant again.",
      agent: "Support agent", error: "Something went wrong. Please try again.", busy:
      "We are busy right now; please try again in a moment.", you: "You", assistant: "Assistant"
    },
    zh: {
      open: "在线咨询", close: "关闭对话", title: "客服", placeholder: "请输入您的问题…",
      send: "发送", stop: "停止", stopped: "已停止", fresh: "新对话", copy: "复制", copied: "已复制",
      up: "有帮助", down: "没有帮助", regenerate: "重新回答",
      human: "转人工客服", sources: "参考来源", why: "哪里有问题？", wrong: "答案错误",
      incomplete: "不完整", irrelevant: "答非所问", other: "其他", comment: "补充说明（可选）",
      submit: "提交反馈", thanks: "感谢您的反馈。", unavailable: "此页面暂时无法使用在线客服。",
      waiting: "人工客服即将接入。", joined: "人工客服已接入对话。", back: "已转回智能助手。",
      agent: "人工客服", error: "出错了，请重试。",
      busy: "当前咨询较多，请稍后再试。", you: "您", assistant: "智能助手"
    }
  }[lang];
  var ICON = {
    chat: "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z",
    up: "M2 10h4v11H2zM8 21V10l5-8 1.5 1.2-1 5.8H21a1 1 0 0 1 1 1.2l-2 9A2 2 0 0 1 18 21z",
    down: "M22 14h-4V3h4zM16 3v11l-5 8-1.5-1.2 1-5.8H3a1 1 0 0 1-1-1.2l2-9A2 2 0 0 1 6 3z",
    fresh: "M12 5V2L7 6l5 4V7a5 5 0 1 1-5 5H5a7 7 0 1 0 7-7z"
  };
  var SVG = "http://www.w3.org/2000/svg";
  function icon(node, name, size) {
    var svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", size || 16);
    svg.setAttribute("height", size || 16);
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(SVG, "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute("d", ICON[name]);
    svg.appendChild(path);
    node.appendChild(svg);
    return node;
  }
  var storeKey = "kefu:" + base + ":" + site;
  var state = {
    id: null, token: null, shown: {}, busy: false, unavailable: false, status: null,
    /* The newest message the event stream delivered; a reconnect resumes after it. */
    lastEvent: 0, events: null, retry: 0, deferred: []
  };

  var DARK = "--bg:#1f2125;--fg:#e8eaed;--log:#16181b;--card:#2a2d32;--line:#3c4047;--muted:#a9adb3;--agent:#4cc47f;--field:#16181b";
  var css =
    ":host{all:initial}" +
    ".kefu-root{--accent:#2457d6;--on-accent:#fff;--bg:#fff;--fg:#1c1e21;--log:#f6f7f9;--card:#fff;--line:#dde1e6;--muted:#555;--agent:#1f8a4c;--field:#fff;" +
    "position:fixed;right:16px;bottom:16px;z-index:2147483000;font:15px/1.45 system-ui,sans-serif;color:var(--fg);text-align:left}" +
    ".kefu-root[data-theme=dark]{" + DARK + "}" +
    "@media (prefers-color-scheme:dark){.kefu-root[data-theme=auto]{" + DARK + "}}" +
    ".kefu-root *{box-sizing:border-box}" +
    ".kefu-bubble{width:56px;height:56px;border-radius:50%;border:0;background:var(--accent);color:var(--on-accent);cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center}" +
    ".kefu-root button:focus-visible,.kefu-root textarea:focus-visible,.kefu-root a:focus-visible{outline:3px solid #f2a900;outline-offset:2px}" +
    ".kefu-panel{position:absolute;right:0;bottom:68px;width:370px;max-width:calc(100vw - 32px);height:540px;max-height:calc(100vh - 100px);background:var(--bg);border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.3);display:flex;flex-direction:column;overflow:hidden}" +
    ".kefu-panel[hidden]{display:none}" +
    ".kefu-head{background:var(--accent);color:var(--on-accent);padding:10px 14px;display:flex;gap:6px;align-items:center;font-weight:600}" +
    ".kefu-head span{flex:1}.kefu-head button{background:none;border:0;color:inherit;font-size:20px;line-height:1;cursor:pointer;display:inline-flex;padding:2px}" +
    ".kefu-log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:10px;background:var(--log)}" +
    ".kefu-msg{max-width:88%;padding:8px 11px;border-radius:10px;word-wrap:break-word;overflow-wrap:anywhere}" +
    ".kefu-customer{align-self:flex-end;background:var(--accent);color:var(--on-accent);white-space:pre-wrap}" +
    ".kefu-assistant,.kefu-agent{align-self:flex-start;background:var(--card);border:1px solid var(--line)}" +
    ".kefu-agent{border-color:var(--agent)}.kefu-who{font-size:12px;color:var(--agent);font-weight:600;display:block}" +
    ".kefu-text p{margin:0 0 .5em}.kefu-text p:last-child{margin-bottom:0}.kefu-text ul,.kefu-text ol{margin:.2em 0 .5em;padding-left:1.4em}" +
    ".kefu-text code{font:13px ui-monospace,monospace;background:var(--log);border:1px solid var(--line);border-radius:4px;padding:0 3px}" +
    ".kefu-text pre{margin:.3em 0 .5em;overflow-x:auto;background:var(--log);border:1px solid var(--line);border-radius:6px;padding:6px}" +
    ".kefu-text pre code{border:0;padding:0;background:none;white-space:pre}" +
    ".kefu-root a{color:var(--accent)}.kefu-stopped{display:block;font-size:12px;color:var(--muted);margin-top:4px}" +
    ".kefu-note{align-self:center;font-size:13px;color:var(--muted);text-align:center}" +
    ".kefu-actions{display:flex;gap:6px;margin-top:6px;flex-wrap:wrap}" +
    ".kefu-actions button,.kefu-form button{font-size:13px;padding:3px 8px;display:inline-flex;align-items:center;border:1px solid var(--line);border-radius:6px;background:var(--card);cursor:pointer;color:var(--fg)}" +
    ".kefu-actions button[aria-pressed=true]{border-color:var(--accent);color:var(--accent)}" +
    ".kefu-cites{margin-top:6px;font-size:13px}.kefu-cites summary{cursor:pointer;color:var(--accent)}" +
    ".kefu-cites ol{padding-left:1.2em;margin:4px 0}.kefu-cites li{margin:4px 0}.kefu-cites .kefu-excerpt{color:var(--muted);display:block}" +
    ".kefu-form{display:flex;flex-direction:column;gap:6px;margin-top:6px}.kefu-form select,.kefu-form input{font:inherit;font-size:13px;padding:3px;background:var(--field);color:var(--fg);border:1px solid var(--line)}" +
    ".kefu-input{display:flex;border-top:1px solid var(--line);padding:8px;gap:6px}" +
    ".kefu-input textarea{flex:1;resize:none;font:inherit;padding:6px 8px;border:1px solid var(--line);border-radius:8px;height:40px;background:var(--field);color:var(--fg)}" +
    ".kefu-input button{background:var(--accent);color:var(--on-accent);border:0;border-radius:8px;padding:0 14px;cursor:pointer;font:inherit}" +
    ".kefu-input button[hidden]{display:none}.kefu-input button:disabled{opacity:.5}" +
    ".kefu-handoff{display:block;margin-top:8px;background:var(--accent);color:var(--on-accent);border:0;border-radius:8px;padding:6px 12px;cursor:pointer;font:inherit;font-size:14px}" +
    ".kefu-handoff:disabled{opacity:.5}" +
    ".kefu-human{border:0;background:none;color:var(--accent);font:inherit;font-size:13px;cursor:pointer;padding:4px 12px;text-align:left}" +
    "@media (max-width:480px){.kefu-root{right:8px;bottom:8px}.kefu-panel{position:fixed;left:0;right:0;top:0;bottom:0;width:auto;max-width:none;height:auto;max-height:none;border-radius:0}}";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else if (k.indexOf("on") === 0) node.addEventListener(k.slice(2), attrs[k]);
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) node.appendChild(c); });
    return node;
  }

  /* Markdown, the subset answers use: paragraphs, headings (as bold lines), bulleted and
   * numbered lists, fenced code, inline code, bold, and http(s) links. Every piece of text
   * becomes a text node; a link whose address is not http(s) is shown as its text. */
  function link(href, label) {
    var ok = false;
    try { var u = new URL(href); ok = u.protocol === "https:" || u.protocol === "http:"; } catch (e) { ok = false; }
    if (!ok) return document.createTextNode(label);
    return el("a", { href: href, target: "_blank", rel: "noopener noreferrer nofollow", text: label });
  }
  var INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|\[([^\]\n]+)\]\(([^()\s]+)\)|(https?:\/\/[^\s<>"'()\]]*[^\s<>"'()\].,;:!?])/g;
  function inline(text, out) {
    var at = 0, m, pattern = new RegExp(INLINE.source, "g");
    while ((m = pattern.exec(text))) {
      if (m.index > at) out.appendChild(document.createTextNode(text.slice(at, m.index)));
      if (m[1]) out.appendChild(el("code", { text: m[2] }));
      else if (m[3] !== undefined) { var strong = el("strong"); inline(m[3], strong); out.appendChild(strong); }
      else if (m[4] !== undefined) out.appendChild(link(m[5], m[4]));
      else out.appendChild(link(m[6], m[6]));
      at = pattern.lastIndex;
    }
    if (at < text.length) out.appendChild(document.createTextNode(text.slice(at)));
  }
  function markdown(text, out) {
    var para = null, list = null, item = null, code = null, codeLines = null;
    text.replace(/\r\n?/g, "\n").split("\n").forEach(function (line) {
      if (code) {
        if (/^\s*```/.test(line)) { code = null; return; }
        codeLines.push(line);
        code.textContent = codeLines.join("\n");
        return;
      }
      if (/^\s*```/.test(line)) {
        para = list = item = null;
        code = el("code"); codeLines = [];
        out.appendChild(el("pre", {}, [code]));
        return;
      }
      if (!line.trim()) { para = list = item = null; return; }
      var bullet = /^\s{0,3}([-*+]|(\d{1,3})[.)])\s+(.*)$/.exec(line);
      if (bullet) {
        var tag = bullet[2] ? "ol" : "ul";
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = el(tag);
          if (bullet[2] && +bullet[2] !== 1) list.setAttribute("start", String(+bullet[2]));
          out.appendChild(list);
        }
        para = null;
        item = el("li");
        inline(bullet[3], item);
        list.appendChild(item);
        return;
      }
      if (item && /^\s+\S/.test(line)) { item.appendChild(document.createTextNode(" ")); inline(line.trim(), item); return; }
      list = item = null;
      var heading = /^\s{0,3}#{1,6}\s+(.*)$/.exec(line);
      if (heading) {
        var strong = el("strong");
        inline(heading[1], strong);
        out.appendChild(el("p", {}, [strong]));
        para = null;
        return;
      }
      if (para) para.appendChild(el("br"));
      else { para = el("p"); out.appendChild(para); }
      inline(line, para);
    });
  }
  function show(body, text, role) {
    body.textContent = "";
    if (role === "customer") body.textContent = text;
    else markdown(text || "", body);
  }

  var style = el("style", { text: css });
  var log = el("div", { "class": "kefu-log", role: "log", "aria-live": "polite", "aria-label": T.title });
  var input = el("textarea", { "aria-label": T.placeholder, placeholder: T.placeholder, rows: "1" });
  var send = el("button", { type: "submit", text: T.send });
  var stopButton = el("button", { type: "button", "data-kefu": "stop", text: T.stop, hidden: "" });
  var form = el("form", { "class": "kefu-input" }, [input, send, stopButton]);
  var human = el("button", { type: "button", "class": "kefu-human", text: T.human });
  var freshButton = icon(el("button", { type: "button", "data-kefu": "new", "aria-label": T.fresh, title: T.fresh }), "fresh", 18);
  var closeButton = el("button", { type: "button", "aria-label": T.close, title: T.close, text: "×" });
  var panel = el("section", { "class": "kefu-panel", role: "dialog", "aria-label": T.title, hidden: "" }, [
    el("div", { "class": "kefu-head" }, [el("span", { text: T.title }), freshButton, closeButton]), log, human, form
  ]);
  var bubble = icon(el("button", { type: "button", "class": "kefu-bubble", "aria-label": T.open, "aria-expanded": "false" }), "chat", 26);
  var root = el("div", { "class": "kefu-root", "data-theme": theme, lang: lang }, [panel, bubble]);
  if (color) root.style.setProperty("--accent", color);
  var host = el("kefu-widget", { "data-kefu": "widget" });
  var shadow = host.attachShadow({ mode: "open" });
  shadow.appendChild(style);
  shadow.appendChild(root);

  function scrollDown() { log.scrollTop = log.scrollHeight; }
  function note(text) { log.appendChild(el("div", { "class": "kefu-note", text: text })); scrollDown(); }

  function headers(json) {
    var h = {};
    if (json) h["Content-Type"] = "application/json";
    if (site) h["X-Kefu-Site"] = site;
    if (state.token) h["Authorization"] = "Bearer " + state.token;
    return h;
  }

  function api(method, path, body) {
    return fetch(base + path, { method: method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) });
  }

  function unavailable() {
    state.unavailable = true;
    root.setAttribute("data-state", "unavailable");
    log.textContent = "";
    note(T.unavailable);
    input.disabled = true; send.disabled = true; human.hidden = true;
  }

  function save() { try { localStorage.setItem(storeKey, JSON.stringify({ id: state.id, token: state.token })); } catch (e) { /* private mode */ } }

  /* Forgets the conversation (it is gone on the server, or the customer starts anew). */
  function forget() {
    var events = state.events;
    state.events = null;
    if (events) events.abort();
    state.id = null; state.token = null; state.shown = {}; state.lastEvent = 0; state.status = null;
    state.deferred = [];
    save();
  }

  function open() {
    if (state.id) return Promise.resolve(true);
    return api("POST", "/api/conversations", {}).then(function (r) {
      if (r.status === 401 || r.status === 403) { unavailable(); return false; }
      if (!r.ok) { note(T.error); return false; }
      return r.json().then(function (c) { state.id = c.id; state.token = c.customer_token; save(); listen(); return true; });
    }, function () { unavailable(); return false; });
  }

  function bubbleFor(role, text) {
    var node = el("div", { "class": "kefu-msg kefu-" + role });
    if (role === "agent") node.appendChild(el("span", { "class": "kefu-who", text: T.agent }));
    var body = el("div", { "class": "kefu-text" });
    show(body, text, role);
    node.appendChild(body);
    log.appendChild(node);
    scrollDown();
    return { node: node, body: body };
  }

  function citations(list) {
    if (!list || !list.length) return null;
    var items = list.map(function (c) {
      var label = "[" + c.number + "] " + c.title + (c.heading && c.heading !== c.title ? " — " + c.heading : "");
      var head = /^https?:\/\//.test(c.url || "") ? link(c.url, label) : el("strong", { text: label });
      return el("li", {}, [head, c.excerpt ? el("span", { "class": "kefu-excerpt", text: c.excerpt }) : null]);
    });
    return el("details", { "class": "kefu-cites" }, [el("summary", { text: T.sources + " (" + list.length + ")" }), el("ol", {}, items)]);
  }

  function feedbackForm(messageId, box, downButton) {
    var reason = el("select", { "aria-label": T.why }, ["wrong", "incomplete", "irrelevant", "other"].map(function (r) {
      return el("option", { value: r, text: T[r] });
    }));
    var comment = el("input", { type: "text", "aria-label": T.comment, placeholder: T.comment, maxlength: "1000" });
    var submit = el("button", { type: "submit", text: T.submit });
    var f = el("form", { "class": "kefu-form", "data-kefu": "reason" }, [el("label", { text: T.why }), reason, comment, submit]);
    f.addEventListener("submit", function (e) {
      e.preventDefault();
      submit.disabled = true;
      rate(messageId, "down", [reason.value], comment.value).then(function (ok) {
        f.replaceWith(el("div", { "class": "kefu-note", text: ok ? T.thanks : T.error }));
        downButton.setAttribute("aria-pressed", "true");
      });
    });
    box.appendChild(f);
    reason.focus();
  }

  function rate(messageId, rating, reasons, comment) {
    var body = { rating: rating, reasons: reasons || [] };
    if (comment) body.comment = comment;
    return api("POST", "/api/conversations/" + state.id + "/messages/" + messageId + "/feedback", body).then(function (r) { return r.ok; }, function () { return false; });
  }

  /* Copies what the reader sees (the rendered text, not the Markdown). */
  function copyButton(body) {
    var button = el("button", { type: "button", "data-kefu": "copy", text: T.copy });
    button.addEventListener("click", function () {
      var text = body.innerText;
      var copied = navigator.clipboard && navigator.clipboard.writeText
        ? navigator.clipboard.writeText(text)
        : Promise.reject(new Error("no clipboard"));
      copied.catch(function () {
        var area = el("textarea", { style: "position:fixed;opacity:0" });
        area.value = text;
        shadow.appendChild(area);
        area.select();
        try { document.execCommand("copy"); } finally { area.remove(); }
      }).then(function () {
        button.textContent = T.copied;
        setTimeout(function () { button.textContent = T.copy; }, 1500);
      });
    });
    return button;
  }

  function finishAnswer(view, done) {
    if (done.message_id === null || done.message_id === undefined) { view.node.remove(); return; }
    view.node.setAttribute("data-message", done.message_id);
    state.shown[done.message_id] = true;
    if (done.finish_reason === "cancelled") {
      view.node.setAttribute("data-stopped", "true");
      view.node.appendChild(el("span", { "class": "kefu-stopped", text: T.stopped }));
    }
    if (done.abstained) {
      /* The documents do not hold the answer: say so, and offer a person prominently. */
      if (done.replacement) show(view.body, done.replacement, "assistant");
      view.node.setAttribute("data-abstained", "true");
      var handoff = el("button", { type: "button", "class": "kefu-handoff", "data-kefu": "handoff", text: T.human });
      handoff.addEventListener("click", function () { handoff.disabled = true; requestHuman(); });
      view.node.appendChild(handoff);
    }
    var cites = citations(done.citations);
    if (cites) view.node.appendChild(cites);
    answerActions(view, done.message_id);
  }

  function answerActions(view, messageId) {
    var up = icon(el("button", { type: "button", "aria-pressed": "false", "aria-label": T.up, title: T.up }), "up");
    var down = icon(el("button", { type: "button", "aria-pressed": "false", "aria-label": T.down, title: T.down }), "down");
    var again = el("button", { type: "button", text: T.regenerate });
    var actions = el("div", { "class": "kefu-actions" }, [up, down, again, copyButton(view.body)]);
    up.addEventListener("click", function () { rate(messageId, "up").then(function (ok) { if (ok) up.setAttribute("aria-pressed", "true"); }); });
    down.addEventListener("click", function () { if (!view.node.querySelector("[data-kefu=reason]")) feedbackForm(messageId, view.node, down); });
    again.addEventListener("click", function () {
      if (state.busy) return;
      stream("/api/conversations/" + state.id + "/messages/" + messageId + "/regenerate", undefined);
    });
    view.node.appendChild(actions);
  }

  /* Reads Server-Sent Events from a response body: onEvent(name, data, id) per event. */
  function readEvents(body, onEvent) {
    var reader = body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function handle(block) {
      var name = "message", data = [], id = null;
      block.split("\n").forEach(function (line) {
        if (line.indexOf("event:") === 0) name = line.slice(6).trim();
        else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.indexOf("id:") === 0) id = line.slice(3).trim();
      });
      if (data.length) onEvent(name, JSON.parse(data.join("\n")), id);
    }
    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) { if (buffer.trim()) handle(buffer); return; }
        buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
        var parts = buffer.split("\n\n");
        buffer = parts.pop();
        parts.forEach(handle);
        return pump();
      });
    }
    return pump();
  }

  function setBusy(busy) {
    state.busy = busy;
    send.hidden = busy; stopButton.hidden = !busy;
    if (!busy) {
      /* Messages the event stream brought while an answer was streaming here. */
      var deferred = state.deferred;
      state.deferred = [];
      render(deferred);
    }
  }

  /* POSTs and reads the answer as Server-Sent Events. */
  function stream(path, body) {
    setBusy(true);
    var view = bubbleFor("assistant", "");
    view.node.setAttribute("aria-busy", "true");
    var text = "";
    return api("POST", path, body === undefined ? {} : body).then(function (r) {
      if (r.status === 202) { view.node.remove(); return r.json().then(function () { note(T.waiting); }); }
      if (r.status === 503 || r.status === 429) { view.body.textContent = T.busy; return; }
      if (!r.ok || !r.body) { view.body.textContent = T.error; return; }
      return readEvents(r.body, function (name, payload) {
        if (name === "token") { text += payload.text; show(view.body, text, "assistant"); scrollDown(); }
        else if (name === "done") finishAnswer(view, payload);
        else if (name === "error") show(view.body, text ? text + "\n\n" + T.error : T.error, "assistant");
      });
    }).catch(function () { view.body.textContent = T.error; }).then(function () {
      view.node.removeAttribute("aria-busy");
      setBusy(false);
    });
  }

  function stopAnswer() {
    if (!state.busy || !state.id) return;
    stopButton.disabled = true;
    /* The answer's own stream then ends with `done` (cancelled); 409: it had just finished. */
    api("POST", "/api/conversations/" + state.id + "/stop", {}).catch(function () { /* offline */ })
      .then(function () { stopButton.disabled = false; });
  }

  function render(messages) {
    messages.forEach(function (m) {
      if (state.shown[m.id]) return;
      state.shown[m.id] = true;
      if (m.role === "customer") {
        // The question typed here is already shown: give it its id instead of a copy.
        var pending = Array.prototype.filter.call(log.querySelectorAll(".kefu-customer[data-pending]"), function (n) {
          return n.querySelector(".kefu-text").textContent === m.content;
        })[0];
        if (pending) { pending.removeAttribute("data-pending"); pending.setAttribute("data-message", m.id); return; }
      }
      var view = bubbleFor(m.role, m.content);
      view.node.setAttribute("data-message", m.id);
      if (m.role === "assistant") answerActions(view, m.id);
    });
  }

  function receive(message) {
    if (state.shown[message.id]) return;
    /* The answer streaming here arrives with its own `done`; anything else waits for it. */
    if (state.busy && message.role !== "agent") { state.deferred.push(message); return; }
    render([message]);
  }

  function statusChanged(status) {
    if (state.status && state.status !== status) {
      if (status === "agent") note(T.joined);
      else if (state.status === "agent") note(T.back);
    }
    state.status = status;
  }

  /* The conversation's event stream: its messages after the last one delivered (all of them
   * on first opening), and its status. Reconnects with a growing pause when it drops. */
  function listen() {
    if (!state.id || state.events || state.unavailable) return;
    var controller = new AbortController();
    state.events = controller;
    var h = headers(false);
    h["Last-Event-ID"] = String(state.lastEvent);
    var outcome = fetch(base + "/api/conversations/" + state.id + "/events", { headers: h, signal: controller.signal }).then(function (r) {
      if (r.status === 404) { forget(); return "gone"; }
      if (r.status === 401 || r.status === 403) { unavailable(); return "gone"; }
      if (!r.ok || !r.body) return "retry";
      state.retry = 0;
      return readEvents(r.body, function (name, data, id) {
        if (name === "status") statusChanged(data.status);
        else if (name === "message") {
          if (id) state.lastEvent = Math.max(state.lastEvent, Number(id));
          receive(data);
        }
      });
    });
    outcome.catch(function () { return "retry"; }).then(function (result) {
      if (state.events !== controller) return;
      state.events = null;
      if (result === "gone") return;
      var wait = Math.min(30000, 1000 * Math.pow(2, state.retry));
      state.retry += 1;
      setTimeout(listen, wait);
    });
  }

  function ask(e) {
    e.preventDefault();
    var content = input.value.trim();
    if (!content || state.busy || state.unavailable) return;
    open().then(function (ok) {
      if (!ok) return;
      input.value = "";
      var view = bubbleFor("customer", content);
      view.node.setAttribute("data-pending", "true");
      return stream("/api/conversations/" + state.id + "/messages", { content: content });
    });
  }

  function toggle(showPanel) {
    panel.hidden = !showPanel;
    bubble.setAttribute("aria-expanded", String(showPanel));
    if (showPanel) input.focus(); else bubble.focus();
  }

  function startOver() {
    if (state.busy) stopAnswer();
    forget();
    log.textContent = "";
    human.hidden = false;
    input.focus();
  }

  form.addEventListener("submit", ask);
  input.addEventListener("keydown", function (e) { if (e.key === "Enter" && !e.shiftKey) ask(e); });
  stopButton.addEventListener("click", stopAnswer);
  freshButton.addEventListener("click", startOver);
  bubble.addEventListener("click", function () { toggle(panel.hidden); });
  closeButton.addEventListener("click", function () { toggle(false); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") toggle(false); });
  function requestHuman() {
    open().then(function (ok) {
      if (!ok) return;
      api("POST", "/api/conversations/" + state.id + "/handoff", {}).then(function (r) {
        note(r.ok ? T.waiting : T.error);
      });
    });
  }
  human.addEventListener("click", requestHuman);

  try {
    var saved = JSON.parse(localStorage.getItem(storeKey) || "null");
    if (saved && saved.id && saved.token) { state.id = saved.id; state.token = saved.token; }
  } catch (e) { /* nothing saved */ }

  function mount() {
    document.body.appendChild(host);
    /* A saved conversation: its history and what comes next, over its event stream. */
    if (state.id) listen();
    /* A wrong or missing key shows "unavailable" at once, not after the first question. */
    else {
      fetch(base + "/api/widget/site", { headers: site ? { "X-Kefu-Site": site } : {} }).then(function (r) {
        if (r.status === 401 || r.status === 403) unavailable();
      }, function () { unavailable(); });
    }
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
