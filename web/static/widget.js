/* Kefu chat widget. One tag on any page:
 *   <script src="https://HOST/widget.js" data-site="KEY" data-lang="en|zh"></script>
 * Plain JavaScript, no build step. Talks to the Kefu server the script came from; keeps the
 * conversation (id and customer token) in localStorage across page loads. */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.__kefuWidget) return;
  window.__kefuWidget = true;
  var base = new URL(script.src, location.href).origin;
  var site = script.getAttribute("data-site") || "";
  var lang = (script.getAttribute("data-lang") || document.documentElement.lang || navigator.language || "en")
    .toLowerCase().indexOf("zh") === 0 ? "zh" : "en";
  var T = {
    en: {
      open: "Chat with us", close: "Close chat", title: "Support", placeholder: "Ask a question…",
      send: "Send", up: "Helpful", down: "Not helpful", regenerate: "Try again",
      human: "Talk to a human", sources: "Sources", why: "What was wrong?", wrong: "Wrong",
      incomplete: "Incomplete", irrelevant: "Off topic", other: "Other", comment: "Tell us more (optional)",
      submit: "Send feedback", thanks: "Thanks for the feedback.", unavailable:
      "Chat is unavailable on this page right now.", waiting: "A person will join the conversation shortly.",
      agent: "Support agent", error: "Something went wrong. Please try again.", busy:
      "We are busy right now; please try again in a moment.", you: "You", assistant: "Assistant"
    },
    zh: {
      open: "在线咨询", close: "关闭对话", title: "客服", placeholder: "请输入您的问题…",
      send: "发送", up: "有帮助", down: "没有帮助", regenerate: "重新回答",
      human: "转人工客服", sources: "参考来源", why: "哪里有问题？", wrong: "答案错误",
      incomplete: "不完整", irrelevant: "答非所问", other: "其他", comment: "补充说明（可选）",
      submit: "提交反馈", thanks: "感谢您的反馈。", unavailable: "此页面暂时无法使用在线客服。",
      waiting: "人工客服即将接入。", agent: "人工客服", error: "出错了，请重试。",
      busy: "当前咨询较多，请稍后再试。", you: "您", assistant: "智能助手"
    }
  }[lang];
  var ICON = {
    chat: '<svg viewBox="0 0 24 24" width="26" height="26" aria-hidden="true"><path fill="currentColor" d="M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2z"/></svg>',
    up: '<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true"><path fill="currentColor" d="M2 10h4v11H2zM8 21V10l5-8 1.5 1.2-1 5.8H21a1 1 0 0 1 1 1.2l-2 9A2 2 0 0 1 18 21z"/></svg>',
    down: '<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true"><path fill="currentColor" d="M22 14h-4V3h4zM16 3v11l-5 8-1.5-1.2 1-5.8H3a1 1 0 0 1-1-1.2l2-9A2 2 0 0 1 6 3z"/></svg>'
  };
  function icon(node, name) { node.innerHTML = ICON[name]; return node; }
  var storeKey = "kefu:" + base + ":" + site;
  var state = { id: null, token: null, shown: {}, busy: false, poll: null, unavailable: false };

  var css =
    ".kefu-root{position:fixed;right:16px;bottom:16px;z-index:2147483000;font:15px/1.45 system-ui,sans-serif;color:#1c1e21}" +
    ".kefu-bubble{width:56px;height:56px;border-radius:50%;border:0;background:#2457d6;color:#fff;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center}" +
    ".kefu-bubble:focus-visible,.kefu-root button:focus-visible,.kefu-root textarea:focus-visible{outline:3px solid #f2a900;outline-offset:2px}" +
    ".kefu-panel{position:absolute;right:0;bottom:68px;width:370px;max-width:calc(100vw - 32px);height:540px;max-height:calc(100vh - 100px);background:#fff;border-radius:12px;box-shadow:0 8px 30px rgba(0,0,0,.3);display:flex;flex-direction:column;overflow:hidden}" +
    ".kefu-panel[hidden]{display:none}" +
    ".kefu-head{background:#2457d6;color:#fff;padding:10px 14px;display:flex;justify-content:space-between;align-items:center;font-weight:600}" +
    ".kefu-head button{background:none;border:0;color:#fff;font-size:20px;cursor:pointer}" +
    ".kefu-log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:10px;background:#f6f7f9}" +
    ".kefu-msg{max-width:88%;padding:8px 11px;border-radius:10px;white-space:pre-wrap;word-wrap:break-word}" +
    ".kefu-customer{align-self:flex-end;background:#2457d6;color:#fff}" +
    ".kefu-assistant,.kefu-agent{align-self:flex-start;background:#fff;border:1px solid #dde1e6}" +
    ".kefu-agent{border-color:#1f8a4c}.kefu-who{font-size:12px;color:#1f8a4c;font-weight:600;display:block}" +
    ".kefu-note{align-self:center;font-size:13px;color:#555;text-align:center}" +
    ".kefu-actions{display:flex;gap:6px;margin-top:6px;flex-wrap:wrap}" +
    ".kefu-actions button,.kefu-form button{font-size:13px;padding:3px 8px;display:inline-flex;align-items:center;border:1px solid #c5cbd3;border-radius:6px;background:#fff;cursor:pointer;color:#1c1e21}" +
    ".kefu-actions button[aria-pressed=true]{background:#e4ecff;border-color:#2457d6}" +
    ".kefu-cites{margin-top:6px;font-size:13px}.kefu-cites summary{cursor:pointer;color:#2457d6}" +
    ".kefu-cites li{margin:4px 0}.kefu-cites .kefu-excerpt{color:#555;display:block}" +
    ".kefu-form{display:flex;flex-direction:column;gap:6px;margin-top:6px}.kefu-form select,.kefu-form input{font:inherit;font-size:13px;padding:3px}" +
    ".kefu-input{display:flex;border-top:1px solid #dde1e6;padding:8px;gap:6px}" +
    ".kefu-input textarea{flex:1;resize:none;font:inherit;padding:6px 8px;border:1px solid #c5cbd3;border-radius:8px;height:40px}" +
    ".kefu-input button{background:#2457d6;color:#fff;border:0;border-radius:8px;padding:0 14px;cursor:pointer}" +
    ".kefu-input button:disabled{opacity:.5}" +
    ".kefu-handoff{display:block;margin-top:8px;background:#2457d6;color:#fff;border:0;border-radius:8px;padding:6px 12px;cursor:pointer;font:inherit;font-size:14px}" +
    ".kefu-handoff:disabled{opacity:.5}" +
    ".kefu-human{border:0;background:none;color:#2457d6;font-size:13px;cursor:pointer;padding:4px 12px;text-align:left}" +
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

  var style = el("style", { text: css });
  var log = el("div", { "class": "kefu-log", role: "log", "aria-live": "polite", "aria-label": T.title });
  var input = el("textarea", { "aria-label": T.placeholder, placeholder: T.placeholder, rows: "1" });
  var send = el("button", { type: "submit", text: T.send });
  var form = el("form", { "class": "kefu-input" }, [input, send]);
  var human = el("button", { type: "button", "class": "kefu-human", text: T.human });
  var closeButton = el("button", { type: "button", "aria-label": T.close, text: "×" });
  var panel = el("section", { "class": "kefu-panel", role: "dialog", "aria-label": T.title, hidden: "" }, [
    el("div", { "class": "kefu-head" }, [el("span", { text: T.title }), closeButton]), log, human, form
  ]);
  var bubble = icon(el("button", { type: "button", "class": "kefu-bubble", "aria-label": T.open, "aria-expanded": "false" }), "chat");
  var root = el("div", { "class": "kefu-root", "data-kefu": "widget" }, [panel, bubble]);

  function note(text) { log.appendChild(el("div", { "class": "kefu-note", text: text })); log.scrollTop = log.scrollHeight; }

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

  function open() {
    if (state.id) return Promise.resolve(true);
    return api("POST", "/api/conversations", {}).then(function (r) {
      if (r.status === 401 || r.status === 403) { unavailable(); return false; }
      if (!r.ok) { note(T.error); return false; }
      return r.json().then(function (c) { state.id = c.id; state.token = c.customer_token; save(); return true; });
    }, function () { unavailable(); return false; });
  }

  function bubbleFor(role, text) {
    var node = el("div", { "class": "kefu-msg kefu-" + role });
    if (role === "agent") node.appendChild(el("span", { "class": "kefu-who", text: T.agent }));
    var body = el("span", { "class": "kefu-text", text: text || "" });
    node.appendChild(body);
    log.appendChild(node);
    log.scrollTop = log.scrollHeight;
    return { node: node, body: body };
  }

  function citations(list) {
    if (!list || !list.length) return null;
    var items = list.map(function (c) {
      var label = "[" + c.number + "] " + c.title + (c.heading && c.heading !== c.title ? " — " + c.heading : "");
      var head = /^https?:\/\//.test(c.url || "") ? el("a", { href: c.url, target: "_blank", rel: "noopener", text: label }) : el("strong", { text: label });
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

  function finishAnswer(view, done) {
    view.node.setAttribute("data-message", done.message_id);
    state.shown[done.message_id] = true;
    if (done.abstained) {
      /* The documents do not hold the answer: say so, and offer a person prominently. */
      if (done.replacement) view.body.textContent = done.replacement;
      view.node.setAttribute("data-abstained", "true");
      var handoff = el("button", { type: "button", "class": "kefu-handoff", "data-kefu": "handoff", text: T.human });
      handoff.addEventListener("click", function () { handoff.disabled = true; requestHuman(); });
      view.node.appendChild(handoff);
    }
    var cites = citations(done.citations);
    if (cites) view.node.appendChild(cites);
    var up = icon(el("button", { type: "button", "aria-pressed": "false", "aria-label": T.up, title: T.up }), "up");
    var down = icon(el("button", { type: "button", "aria-pressed": "false", "aria-label": T.down, title: T.down }), "down");
    var again = el("button", { type: "button", text: T.regenerate });
    var actions = el("div", { "class": "kefu-actions" }, [up, down, again]);
    up.addEventListener("click", function () { rate(done.message_id, "up").then(function (ok) { if (ok) up.setAttribute("aria-pressed", "true"); }); });
    down.addEventListener("click", function () { if (!view.node.querySelector("[data-kefu=reason]")) feedbackForm(done.message_id, view.node, down); });
    again.addEventListener("click", function () {
      if (state.busy) return;
      stream("/api/conversations/" + state.id + "/messages/" + done.message_id + "/regenerate", undefined);
    });
    view.node.appendChild(actions);
  }

  /* POSTs and reads the answer as Server-Sent Events. */
  function stream(path, body) {
    state.busy = true; send.disabled = true;
    var view = bubbleFor("assistant", "");
    view.node.setAttribute("aria-busy", "true");
    var text = "";
    return api("POST", path, body === undefined ? {} : body).then(function (r) {
      if (r.status === 202) { view.node.remove(); return r.json().then(function () { note(T.waiting); startPolling(); }); }
      if (r.status === 503 || r.status === 429) { view.body.textContent = T.busy; return; }
      if (!r.ok || !r.body) { view.body.textContent = T.error; return; }
      var reader = r.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      function handle(block) {
        var name = "message", data = [];
        block.split("\n").forEach(function (line) {
          if (line.indexOf("event:") === 0) name = line.slice(6).trim();
          else if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
        });
        if (!data.length) return;
        var payload = JSON.parse(data.join("\n"));
        if (name === "token") { text += payload.text; view.body.textContent = text; log.scrollTop = log.scrollHeight; }
        else if (name === "done") finishAnswer(view, payload);
        else if (name === "error") view.body.textContent = text ? text + "\n" + T.error : T.error;
      }
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) { if (buffer.trim()) handle(buffer); return; }
          buffer += decoder.decode(chunk.value, { stream: true });
          var parts = buffer.split("\n\n");
          buffer = parts.pop();
          parts.forEach(handle);
          return pump();
        });
      }
      return pump();
    }, function () { view.body.textContent = T.error; }).then(function () {
      view.node.removeAttribute("aria-busy");
      state.busy = false; send.disabled = false;
    });
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
    });
  }

  function refresh() {
    if (!state.id || state.busy) return Promise.resolve();
    return api("GET", "/api/conversations/" + state.id + "/messages").then(function (r) {
      if (r.status === 404) { state.id = null; state.token = null; save(); return; }
      if (r.status === 401 || r.status === 403) { unavailable(); return; }
      if (!r.ok) return;
      return r.json().then(function (c) {
        render(c.messages);
        if (c.status === "agent" || c.status === "handoff_requested") startPolling();
      });
    }, function () { /* offline: try again later */ });
  }

  /* While the chat is open, new messages (an agent's replies) are fetched every 2 s. */
  function startPolling() {
    if (!state.poll) state.poll = setInterval(function () { if (!panel.hidden) refresh(); }, 2000);
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
      return stream("/api/conversations/" + state.id + "/messages", { content: content }).then(refresh);
    });
  }

  function toggle(show) {
    panel.hidden = !show;
    bubble.setAttribute("aria-expanded", String(show));
    if (show) { input.focus(); refresh(); startPolling(); } else bubble.focus();
  }

  form.addEventListener("submit", ask);
  input.addEventListener("keydown", function (e) { if (e.key === "Enter" && !e.shiftKey) ask(e); });
  bubble.addEventListener("click", function () { toggle(panel.hidden); });
  closeButton.addEventListener("click", function () { toggle(false); });
  panel.addEventListener("keydown", function (e) { if (e.key === "Escape") toggle(false); });
  function requestHuman() {
    open().then(function (ok) {
      if (!ok) return;
      api("POST", "/api/conversations/" + state.id + "/handoff", {}).then(function (r) {
        if (r.ok) { note(T.waiting); startPolling(); } else note(T.error);
      });
    });
  }
  human.addEventListener("click", requestHuman);

  try {
    var saved = JSON.parse(localStorage.getItem(storeKey) || "null");
    if (saved && saved.id && saved.token) { state.id = saved.id; state.token = saved.token; }
  } catch (e) { /* nothing saved */ }

  function mount() {
    document.head.appendChild(style);
    document.body.appendChild(root);
    if (state.id) refresh();
    /* A wrong or missing key shows "unavailable" at once, not after the first question. */
    if (!state.id) {
      fetch(base + "/api/widget/site", { headers: site ? { "X-Kefu-Site": site } : {} }).then(function (r) {
        if (r.status === 401 || r.status === 403) unavailable();
      }, function () { unavailable(); });
    }
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
