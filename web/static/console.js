/* Kefu staff pages: sign-in, the agent console and the admin pages. Plain JavaScript over the
 * JSON API; cookie writes carry the session's CSRF token from the page's meta tag. When the
 * session has ended, drafts are kept in sessionStorage and the browser goes to the sign-in
 * page, which brings it back. */
(function () {
  "use strict";
  var csrfMeta = document.querySelector("meta[name=csrf-token]");
  var csrf = csrfMeta ? csrfMeta.content : "";

  /* The page's language: its texts come with it (English pages carry none). t("Job {0}", 7)
   * is the text in the page's language with its placeholders filled. */
  var textsNode = document.getElementById("kefu-texts");
  var TEXTS = textsNode ? JSON.parse(textsNode.textContent) : {};
  function t(text) {
    var args = Array.prototype.slice.call(arguments, 1);
    return (TEXTS[text] || text).replace(/\{(\d)\}/g, function (_, i) { return String(args[+i]); });
  }
  /* An API error in the page's language: its code's text, the server's details beside it. */
  function errorText(data, fallback) {
    var message = (data && data.message) || fallback;
    var known = data && data.code && TEXTS["code:" + data.code];
    return known ? known + "（" + message + "）" : message;
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") node.textContent = attrs[k];
      else if (k.indexOf("on") === 0) node.addEventListener(k.slice(2), attrs[k]);
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (c) { if (c) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  function saveDrafts() {
    document.querySelectorAll("[data-draft]").forEach(function (field) {
      if (field.value) sessionStorage.setItem("kefu-draft:" + location.pathname + ":" + field.getAttribute("data-draft"), field.value);
    });
  }

  function restoreDrafts() {
    document.querySelectorAll("[data-draft]").forEach(function (t) {
      var key = "kefu-draft:" + location.pathname + ":" + t.getAttribute("data-draft");
      var text = sessionStorage.getItem(key);
      if (text && !t.value) { t.value = text; sessionStorage.removeItem(key); }
    });
  }

  function signInAgain() {
    saveDrafts();
    location.href = "/login?expired=1&next=" + encodeURIComponent(location.pathname + location.search);
  }

  /* JSON API call; a 401 sends the user to sign in (drafts kept). */
  function api(method, path, body, raw) {
    var headers = { "X-CSRF-Token": csrf };
    if (body !== undefined && !raw) headers["Content-Type"] = "application/json";
    return fetch(path, { method: method, headers: headers, credentials: "same-origin", body: body === undefined ? undefined : raw ? body : JSON.stringify(body) })
      .then(function (r) {
        if (r.status === 401) { signInAgain(); throw new Error("signed out"); }
        var type = r.headers.get("content-type") || "";
        var parsed = type.indexOf("json") >= 0 ? r.json() : r.text();
        return parsed.then(function (data) {
          if (!r.ok) throw new Error(errorText(data, r.statusText));
          return data;
        });
      });
  }

  function showError(form, error) {
    var box = form.querySelector(".error");
    if (box) { box.textContent = error.message; box.hidden = false; }
  }

  /* Sign-in page. */
  var login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", function (e) {
      e.preventDefault();
      fetch("/api/auth/login", { method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
        body: JSON.stringify({ name: login.name.value, password: login.password.value }) })
        .then(function (r) { return r.json().then(function (d) { if (!r.ok) throw new Error(errorText(d, r.statusText)); return d; }); })
        .then(function () {
          var next = login.getAttribute("data-next") || "/agent";
          location.href = /^\/(?![\/\\])[^\\\u0000-\u001f]*$/.test(next) ? next : "/agent";
        }, function (error) { showError(login, error); });
    });
  }

  var signOut = document.getElementById("sign-out");
  if (signOut) signOut.addEventListener("click", function () {
    api("POST", "/api/auth/logout", {}).then(function () { location.href = "/login"; }, function () { location.href = "/login"; });
  });

  restoreDrafts();

  /* Agent console. */
  var list = document.getElementById("conversations");
  if (list) {
    var current = null, lastList = "", lastTranscript = "";
    var transcript = document.getElementById("transcript");
    var head = document.getElementById("transcript-head");
    var reply = document.getElementById("reply");
    var statusLabel = { assistant: t("bot"), handoff_requested: t("wants a human"), agent: t("with an agent") };
    var searchText = document.getElementById("search-text");
    var searchNone = document.getElementById("search-none");
    var query = "";

    function loadList() {
      var asked = query;
      var path = "/api/agent/conversations" + (asked ? "?q=" + encodeURIComponent(asked) : "");
      return api("GET", path).then(function (data) {
        var text = asked + "\n" + JSON.stringify(data);
        if (text === lastList || asked !== query) return;
        lastList = text;
        searchNone.hidden = !(asked && !data.conversations.length);
        searchNone.textContent = asked ? t("No conversation contains “{0}”.", asked) : "";
        list.textContent = "";
        data.conversations.forEach(function (c) {
          var button = el("button", { type: "button", "data-id": c.id, "aria-current": String(c.id === current) }, [
            el("span", { "class": "status status-" + c.status, text: statusLabel[c.status] || c.status }),
            " " + c.id.slice(0, 8) + " · " + new Date(c.created_ms).toLocaleTimeString()
          ]);
          button.addEventListener("click", function () { current = c.id; lastTranscript = ""; loadTranscript(); loadList(); });
          list.appendChild(el("li", {}, [button]));
        });
      });
    }

    function feedbackLine(f) {
      var rating = f.rating > 0 ? t("thumbs up") : f.rating < 0 ? t("thumbs down") : t("note");
      var parts = [t(f.rater_role) + ": " + rating];
      if (f.reasons && f.reasons.length) parts.push("(" + f.reasons.map(function (r) { return t(r); }).join(", ") + ")");
      if (f.comment) parts.push("“" + f.comment + "”");
      var li = el("li", { "class": "feedback" }, [parts.join(" ")]);
      if (f.corrected_answer) li.appendChild(el("div", { "class": "correction", text: t("Correction: {0}", f.corrected_answer) }));
      return li;
    }

    function answerTools(m) {
      var box = el("div", { "class": "tools" });
      var up = el("button", { type: "button", text: t("Good answer") });
      var down = el("button", { type: "button", text: t("Bad answer") });
      var area = el("textarea", { rows: "3", "aria-label": t("Corrected answer"), "data-draft": "correction-" + m.id, placeholder: t("Write the answer it should have given") });
      var save = el("button", { type: "submit", text: t("Save correction") });
      var form = el("form", { "class": "correct" }, [area, save]);
      up.addEventListener("click", function () { api("POST", "/api/agent/conversations/" + current + "/messages/" + m.id + "/feedback", { rating: "up" }).then(loadTranscript); });
      down.addEventListener("click", function () { api("POST", "/api/agent/conversations/" + current + "/messages/" + m.id + "/feedback", { rating: "down" }).then(loadTranscript); });
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        if (!area.value.trim()) return;
        api("POST", "/api/agent/conversations/" + current + "/messages/" + m.id + "/feedback", { rating: "down", corrected_answer: area.value })
          .then(function () { area.value = ""; lastTranscript = ""; loadTranscript(); }, function (error) { alert(error.message); });
      });
      box.appendChild(el("div", {}, [up, " ", down]));
      box.appendChild(form);
      return box;
    }

    function loadTranscript() {
      if (!current) return Promise.resolve();
      return api("GET", "/api/agent/conversations/" + current).then(function (c) {
        var text = JSON.stringify(c);
        if (text === lastTranscript) return;
        // Keep what the agent is typing while the transcript refreshes.
        saveDrafts();
        lastTranscript = text;
        head.textContent = "";
        var actions = el("div", { "class": "actions" });
        if (c.status === "agent") {
          actions.appendChild(el("button", { type: "button", id: "hand-back", text: t("Hand back to the bot"), onclick: function () { api("POST", "/api/agent/conversations/" + current + "/release", {}).then(function () { lastTranscript = ""; loadTranscript(); }); } }));
        } else {
          actions.appendChild(el("button", { type: "button", id: "take-over", text: t("Take over"), onclick: function () { api("POST", "/api/agent/conversations/" + current + "/takeover", {}).then(function () { lastTranscript = ""; loadTranscript(); }); } }));
        }
        var exported = "/api/agent/conversations/" + encodeURIComponent(c.id) + "/export?format=";
        actions.appendChild(el("a", { id: "export-md", href: exported + "markdown", download: "", text: t("Export as Markdown") }));
        actions.appendChild(el("a", { id: "export-json", href: exported + "json", download: "", text: t("Export as JSON") }));
        head.appendChild(el("h2", { text: t("Conversation {0}", c.id.slice(0, 8)) + " · " + (statusLabel[c.status] || c.status) }));
        head.appendChild(actions);
        reply.hidden = c.status !== "agent";
        transcript.textContent = "";
        c.messages.forEach(function (m) {
          var item = el("li", { "class": "msg msg-" + m.role, "data-message": m.id }, [
            el("div", { "class": "role", text: t(m.role) }),
            el("div", { "class": "content", text: m.content })
          ]);
          if (m.role === "assistant") {
            if (m.served) {
              var passages = (m.served.retrieved || []).map(function (r) {
                return el("li", {}, [el("strong", { text: (r.title || "") + (r.heading ? " — " + r.heading : "") }), " ", el("span", { "class": "muted", text: t("score") + " " + (r.score !== undefined ? Number(r.score).toFixed(3) : "?") }), el("div", { "class": "excerpt", text: r.text || "" })]);
              });
              item.appendChild(el("details", { "class": "served" }, [
                el("summary", { text: t("Context it was given ({0} passages, model {1})", passages.length, String(m.served.model_version).slice(0, 12)) }),
                el("ol", {}, passages)
              ]));
            }
            if (m.feedback && m.feedback.length) item.appendChild(el("ul", { "class": "feedback-list" }, m.feedback.map(feedbackLine)));
            item.appendChild(answerTools(m));
          }
          transcript.appendChild(item);
        });
        restoreDrafts();
      });
    }

    /* Search: the list shows the conversations with a message containing the text. */
    var searchTimer = null;
    function search() {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () {
        var wanted = searchText.value.trim();
        if (wanted === query) return;
        query = wanted;
        lastList = "";
        reload();
      }, 250);
    }
    searchText.addEventListener("input", search);
    document.getElementById("search").addEventListener("submit", function (e) { e.preventDefault(); search(); });

    reply.addEventListener("submit", function (e) {
      e.preventDefault();
      var area = document.getElementById("reply-text");
      if (!area.value.trim() || !current) return;
      api("POST", "/api/agent/conversations/" + current + "/reply", { content: area.value }).then(function () {
        area.value = ""; lastTranscript = ""; loadTranscript();
      }, function (error) { alert(error.message); });
    });

    /* Reloads the list and the open transcript; calls while one runs coalesce into one more. */
    var loading = null, again = false;
    function reload() {
      if (loading) { again = true; return; }
      loading = loadList().then(loadTranscript).catch(function () { /* the next event retries */ }).then(function () {
        loading = null;
        if (again) { again = false; reload(); }
      });
    }
    /* Changes are pushed (`sync` on connecting and every 30 s, `conversation` per change);
     * the browser reconnects by itself when the stream drops. */
    function connect() {
      var live = new EventSource("/api/agent/events");
      live.addEventListener("sync", reload);
      live.addEventListener("conversation", reload);
      live.onerror = function () {
        /* Refused (not a dropped connection): a reload finds out why — an ended session goes
         * to sign in, drafts kept — and the stream is tried again. */
        if (live.readyState === EventSource.CLOSED) { reload(); setTimeout(connect, 5000); }
      };
    }
    connect();
  }

  /* Admin: documents. */
  var upload = document.getElementById("upload");
  if (upload) {
    var kb = upload.getAttribute("data-kb");
    var progress = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    upload.addEventListener("submit", function (e) {
      e.preventDefault();
      var files = Array.prototype.slice.call(upload.file.files);
      var done = 0;
      progress.hidden = false;
      function next() {
        if (!files.length) { status.textContent = t("{0} uploaded", done); setTimeout(function () { location.reload(); }, 300); return; }
        var file = files.shift();
        status.textContent = t("Uploading {0}…", file.name);
        var request = new XMLHttpRequest();
        request.open("POST", "/api/admin/knowledge-bases/" + encodeURIComponent(kb) + "/documents?name=" + encodeURIComponent(file.name));
        request.setRequestHeader("X-CSRF-Token", csrf);
        request.upload.onprogress = function (p) { if (p.lengthComputable) progress.value = Math.round(100 * p.loaded / p.total); };
        request.onload = function () {
          if (request.status === 401) return signInAgain();
          if (request.status >= 400) {
            var message = request.statusText;
            try { message = errorText(JSON.parse(request.responseText), message); } catch (err) { /* not JSON */ }
            status.textContent = file.name + ": " + message;
            progress.hidden = true;
            return;
          }
          done += 1;
          next();
        };
        request.onerror = function () { status.textContent = t("{0}: the upload failed", file.name); };
        request.send(file);
      }
      next();
    });
    document.getElementById("documents").addEventListener("click", function (e) {
      var action = e.target.getAttribute("data-action");
      if (!action) return;
      var row = e.target.closest("tr");
      var path = "/api/admin/knowledge-bases/" + encodeURIComponent(kb) + "/documents/" + row.getAttribute("data-id");
      if (action === "delete" && confirm(t("Delete this document and its passages?"))) {
        api("DELETE", path).then(function () { row.remove(); }, function (error) { alert(error.message); });
      } else if (action === "reingest") {
        e.target.disabled = true;
        api("POST", path + "/reingest", {}).then(function (r) { e.target.textContent = t("Re-ingested ({0} passages)", r.chunks); }, function (error) { alert(error.message); e.target.disabled = false; });
      }
    });
  }

  /* Admin: users. */
  var addUser = document.getElementById("add-user");
  if (addUser) {
    addUser.addEventListener("submit", function (e) {
      e.preventDefault();
      api("POST", "/api/admin/users", { name: addUser.name.value, role: addUser.role.value, password: addUser.password.value })
        .then(function () { location.reload(); }, function (error) { showError(addUser, error); });
    });
    document.querySelector("[data-page=users] tbody").addEventListener("click", function (e) {
      if (e.target.getAttribute("data-action") !== "delete-user") return;
      var row = e.target.closest("tr");
      if (confirm(t("Remove {0}?", row.getAttribute("data-name")))) {
        api("DELETE", "/api/admin/users/" + encodeURIComponent(row.getAttribute("data-name"))).then(function () { row.remove(); }, function (error) { alert(error.message); });
      }
    });
  }

  /* Admin: widget sites. */
  var addSite = document.getElementById("add-site");
  if (addSite) {
    var origins = function (text) { return text.split(/\s+/).filter(Boolean); };
    addSite.addEventListener("submit", function (e) {
      e.preventDefault();
      api("POST", "/api/admin/sites", { name: addSite.name.value, allowed_origins: origins(addSite.origins.value) })
        .then(function () { location.reload(); }, function (error) { showError(addSite, error); });
    });
    document.querySelector("[data-page=sites] tbody").addEventListener("click", function (e) {
      var action = e.target.getAttribute("data-action");
      var row = e.target.closest("tr");
      if (action === "save-origins") {
        api("PUT", "/api/admin/sites/" + row.getAttribute("data-id"), { allowed_origins: origins(row.querySelector("input").value) })
          .then(function () { e.target.textContent = t("Saved"); }, function (error) { alert(error.message); });
      } else if (action === "delete-site" && confirm(t("Remove this site? Its key stops working at once."))) {
        api("DELETE", "/api/admin/sites/" + row.getAttribute("data-id")).then(function () { row.remove(); }, function (error) { alert(error.message); });
      }
    });
  }
  /* Admin: training jobs with their loss curves and gate reports, model versions. */
  var training = document.querySelector("[data-page=training]");
  if (training) {
    var status = document.getElementById("training-status");
    var selected = null;
    var short = function (v) { return v ? v.slice(0, 12) : ""; };
    var when = function (ms) { return ms ? new Date(ms).toLocaleString() : ""; };
    var fixed = function (x) { return typeof x === "number" ? x.toFixed(4) : "—"; };
    var colours = { cpt: "#7a4fb5", sft: "#1f6feb", dpo: "#d9480f" };

    function drawCurve(points) {
      var svg = document.getElementById("loss-chart");
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      var ns = "http://www.w3.org/2000/svg";
      var line = function (attrs) { var n = document.createElementNS(ns, attrs.tag); for (var k in attrs) if (k !== "tag") n.setAttribute(k, attrs[k]); svg.appendChild(n); return n; };
      if (!points.length) { var empty = line({ tag: "text", x: 20, y: 110 }); empty.textContent = t("No steps yet"); return; }
      var losses = points.map(function (p) { return p.loss; });
      var lo = Math.min.apply(null, losses), hi = Math.max.apply(null, losses);
      if (hi - lo < 1e-9) { hi = lo + 1; }
      var w = 560, h = 180, x0 = 36, y0 = 10;
      line({ tag: "line", x1: x0, y1: y0 + h, x2: x0 + w, y2: y0 + h, stroke: "#888" });
      line({ tag: "line", x1: x0, y1: y0, x2: x0, y2: y0 + h, stroke: "#888" });
      [hi, lo].forEach(function (v, i) { var tick = line({ tag: "text", x: 2, y: i ? y0 + h : y0 + 10, "font-size": 10 }); tick.textContent = v.toFixed(2); });
      var n = points.length;
      var stages = {};
      points.forEach(function (p, i) { (stages[p.stage] = stages[p.stage] || []).push([x0 + (n === 1 ? 0 : i * w / (n - 1)), y0 + h - (p.loss - lo) / (hi - lo) * h]); });
      var legend = 0;
      Object.keys(stages).forEach(function (stage) {
        line({ tag: "polyline", fill: "none", stroke: colours[stage] || "#333", "stroke-width": 2, points: stages[stage].map(function (xy) { return xy.join(","); }).join(" "), "data-stage": stage });
        var name = line({ tag: "text", x: x0 + w - 60, y: y0 + 12 + 14 * legend++, fill: colours[stage] || "#333", "font-size": 12 });
        name.textContent = stage.toUpperCase();
      });
    }

    function curveOf(job) {
      if (job.progress && job.progress.curve) return job.progress.curve;
      var points = [];
      ((job.report && job.report.stages) || []).forEach(function (s) {
        (s.metrics || []).forEach(function (m) { if (typeof m.loss === "number") points.push({ stage: s.stage, step: m.step, loss: m.loss }); });
      });
      return points;
    }

    function showReport(report) {
      var body = document.querySelector("#report tbody");
      var greedy = document.querySelector("#greedy tbody");
      body.textContent = ""; greedy.textContent = "";
      if (!report) { body.appendChild(el("tr", {}, [el("td", { colspan: 4, text: t("The report appears when the job has finished.") })])); return; }
      var r = report.regression || {};
      var verdict = function (ok) { return el("td", { class: ok ? "pass" : "fail", text: ok ? t("pass") : t("fail") }); };
      body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Answer loss on corrected questions ({0})", r.examples || 0) }), el("td", { text: fixed(r.production_loss) }), el("td", { text: fixed(r.candidate_loss) }),
        verdict(r.loss_ratio === null || r.loss_ratio === undefined || r.loss_ratio <= r.max_loss_ratio)]));
      var p = report.parity || {};
      body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Merged weights against base + adapter (relative RMS logit difference, f32; the served Q8_0 file's drift and top-1 agreement)") }), el("td", { text: "—" }), el("td", { text: (p.relative_rms_difference || 0).toExponential(2) + " (≤ " + p.tolerance + "); " + fixed(p.served_q8_0_relative_rms_difference) + ", " + fixed(p.served_q8_0_top1_agreement) }), verdict(p.relative_rms_difference <= p.tolerance)]));
      body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Chat template renders prompts as production does") }), el("td", { text: "—" }), el("td", { text: report.template_parity ? t("same") : t("different") }), verdict(report.template_parity)]));
      var q = report.held_out_questions;
      if (q && q.why) {
        body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Held-out questions") }), el("td", { colspan: 2, text: q.why }), verdict(false)]));
        q = null;
      }
      if (q) {
        var from = q.from === "feedback" ? t("held out of the feedback, answered from the passages they were served with") : t("answered from the knowledge base");
        body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Answer loss on held-out questions ({0}, {1})", q.questions, from) }), el("td", { text: fixed(q.production_loss) }), el("td", { text: fixed(q.candidate_loss) }), verdict(q.loss_ok)]));
        body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Facts of the reference answer stated (greedy; in brackets: share of the answer's terms its passages hold)") }), el("td", { text: fixed(q.production_fact_recall) + " (" + fixed(q.production_support) + ")" }), el("td", { text: fixed(q.candidate_fact_recall) + " (" + fixed(q.candidate_support) + ")" }), verdict(q.facts_ok)]));
        body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Token F1 against the reference answers (in brackets: share of answers that abstained)") }), el("td", { text: fixed(q.production_f1) + " (" + fixed(q.production_abstained) + ")" }), el("td", { text: fixed(q.candidate_f1) + " (" + fixed(q.candidate_abstained) + ")" }), q.answers_ok === undefined ? el("td", {}) : verdict(q.answers_ok)]));
      }
      var hp = report.held_out_pairs;
      if (hp) {
        body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Preference accuracy on held-out pairs ({0}); the candidate's reward accuracy against production in brackets", hp.pairs) }), el("td", { text: fixed(hp.production_preference_accuracy) }), el("td", { text: fixed(hp.candidate_preference_accuracy) + " (" + fixed(hp.reward_accuracy) + ")" }), verdict(hp.ok)]));
      }
      var heldOut = document.querySelector("#held-out tbody");
      heldOut.textContent = "";
      ((q && q.answers) || []).forEach(function (a) {
        heldOut.appendChild(el("tr", {}, [el("td", { text: a.question }), el("td", { text: a.reference }),
          el("td", { text: a.production.answer + " (F1 " + fixed(a.production.f1) + ")" }),
          el("td", { text: a.candidate.answer + " (F1 " + fixed(a.candidate.f1) + ")" })]));
      });
      document.getElementById("held-out-section").hidden = !(q && q.answers && q.answers.length);
      var d = report.dataset || {};
      if (d.learned_from) {
        var names = { agent_correction: t("agent corrections"), agent_rating: t("agent ratings"), accepted_customer: t("accepted customer ratings"), customer: t("unreviewed customer ratings"), knowledge: t("FAQ sections of the knowledge base"), abstention: t("abstention examples") };
        var describe = function (counts) { return Object.keys(counts || {}).map(function (k) { return (names[k] || k) + " " + counts[k]; }).join(", ") || t("none"); };
        body.appendChild(el("tr", { "data-row": "learned-from" }, [el("th", { scope: "row", text: t("Learned from (feedback policy {0}; {1} examples held out for the gate)", d.policy || "?", d.held_out_examples || 0) }),
          el("td", { colspan: 2, text: t("SFT: {0}. Pairs: {1}.", describe(d.learned_from.sft), describe(d.learned_from.pairs))
            + (d.kto_examples ? " " + t("KTO: {0}.", describe(d.learned_from.kto)) : "") }), el("td", {})]));
      }
      body.appendChild(el("tr", {}, [el("th", { scope: "row", text: t("Gate") }), el("td", { text: short(report.production) }), el("td", { text: "" }), verdict(report.passed)]));
      (r.greedy || []).forEach(function (g) {
        greedy.appendChild(el("tr", {}, [el("td", { text: g.question || "" }), el("td", { text: g.expected }), el("td", { class: g.matches ? "pass" : "fail", text: g.candidate })]));
      });
    }

    function showJob(id) {
      return api("GET", "/api/admin/training/jobs/" + id).then(function (job) {
        document.getElementById("job-detail").hidden = false;
        document.getElementById("job-title").textContent = t("Job {0}", job.id) + ": " + t(job.status) + (job.error ? " (" + t(job.error) + ")" : "");
        drawCurve(curveOf(job));
        showReport(job.report);
      });
    }

    function loadJobs() {
      return api("GET", "/api/admin/training/jobs").then(function (data) {
        var body = document.querySelector("#jobs tbody");
        body.textContent = "";
        data.jobs.forEach(function (job) {
          var p = job.progress || {};
          var live = job.status === "running" || job.status === "queued";
          var progress = !live ? (p.curve ? t("{0} steps", p.curve.length) : "") : p.stage ? p.stage + (p.total ? " " + p.step + "/" + p.total + ", " + t("loss") + " " + fixed(p.loss) : "") : "";
          var open = el("button", { type: "button", text: t("Job {0}", job.id), onclick: function () { selected = job.id; showJob(job.id); } });
          body.appendChild(el("tr", { "data-job": job.id, "data-status": job.status }, [el("td", {}, [open]), el("td", { text: t(job.status) + (job.error ? ": " + t(job.error) : "") }), el("td", { text: progress }), el("td", { text: when(job.started_ms) }), el("td", {}, [el("code", { text: short(job.version) })])]));
        });
        if (selected === null && data.jobs.length) selected = data.jobs[0].id;
        if (selected !== null) return showJob(selected);
      });
    }

    function loadVersions() {
      return api("GET", "/api/admin/models").then(function (data) {
        var body = document.querySelector("#versions tbody");
        body.textContent = "";
        data.versions.forEach(function (v) {
          var labels = v.labels.join(", ") + (v.id === data.serving ? " " + t("(serving here)") : "");
          var gate = v.report && typeof v.report.passed === "boolean" ? (v.report.passed ? t("passed") : t("failed")) : "—";
          var actions = el("td");
          if (v.labels.indexOf("production") < 0) {
            actions.appendChild(el("button", { type: "button", "data-action": "promote", text: t("Promote"), onclick: function () {
              if (!confirm(t("Serve version {0} to every customer?", short(v.id)))) return;
              api("POST", "/api/admin/models/" + v.id + "/promote", {}).then(function () { status.textContent = t("Version {0} is production", short(v.id)); refresh(); }, function (e) { status.textContent = e.message; });
            } }));
          }
          body.appendChild(el("tr", { "data-version": v.id }, [el("td", {}, [el("code", { text: short(v.id), title: v.id })]), el("td", { text: labels }), el("td", { text: when(v.created_ms) }), el("td", { text: gate }), actions]));
        });
        if (data.serving_refused) status.textContent = t("The production version was refused: {0}", data.serving_refused);
      });
    }

    function refresh() { return Promise.all([loadJobs(), loadVersions()]).catch(function (e) { status.textContent = e.message; }); }

    var schedule = document.getElementById("schedule");
    var number = function (input) { return input.value.trim() === "" ? null : Number(input.value); };
    api("GET", "/api/admin/training/schedule").then(function (s) {
      schedule.elements.every_minutes.value = s.every_minutes === null ? "" : s.every_minutes;
      schedule.elements.after_new_feedback.value = s.after_new_feedback === null ? "" : s.after_new_feedback;
    });
    schedule.addEventListener("submit", function (event) {
      event.preventDefault();
      var saved = schedule.querySelector(".saved"), box = schedule.querySelector(".error");
      saved.textContent = ""; box.hidden = true;
      var body = { every_minutes: number(schedule.elements.every_minutes), after_new_feedback: number(schedule.elements.after_new_feedback) };
      api("PUT", "/api/admin/training/schedule", body).then(function () { saved.textContent = t("Saved"); }, function (e) { showError(schedule, e); });
    });

    document.getElementById("train-now").addEventListener("click", function () {
      api("POST", "/api/admin/training/jobs", {}).then(function (job) { status.textContent = t("Job {0} queued", job.id); selected = job.id; refresh(); }, function (e) { status.textContent = e.message; });
    });
    document.getElementById("roll-back").addEventListener("click", function () {
      if (!confirm(t("Put the previous version back into production?"))) return;
      api("POST", "/api/admin/models/rollback", {}).then(function (r) { status.textContent = t("Rolled back to {0}", short(r.production)); refresh(); }, function (e) { status.textContent = e.message; });
    });
    refresh();
    setInterval(refresh, 3000);
  }

  /* Feedback inbox: filters, paging, bulk accept / reject. */
  var inbox = document.querySelector("[data-page=feedback]");
  if (inbox) {
    var filter = document.getElementById("inbox-filter");
    var inboxStatus = document.getElementById("inbox-status");
    var offset = 0, pageSize = 50, total = 0;
    var labels = { up: t("thumbs up"), down: t("thumbs down"), corrected: t("corrected") };
    var text = function (value) { return el("div", { class: "pair-text", text: value || "—" }); };

    function query() {
      var parts = ["offset=" + offset, "limit=" + pageSize];
      ["label", "review", "rater", "flagged", "q"].forEach(function (name) {
        var v = filter.elements[name].value.trim();
        if (v && v !== "all") parts.push(name + "=" + encodeURIComponent(v));
      });
      return parts.join("&");
    }

    function loadInbox() {
      return api("GET", "/api/admin/feedback?" + query()).then(function (data) {
        total = data.total;
        if (data.policy) document.getElementById("inbox-policy").textContent = data.policy;
        var body = document.querySelector("#inbox tbody");
        body.textContent = "";
        document.getElementById("select-all").checked = false;
        if (!data.items.length) body.appendChild(el("tr", {}, [el("td", { colspan: 6, text: t("No rated answers match.") })]));
        data.items.forEach(function (item) {
          var pair = item.pair || {};
          var chosen = pair.chosen !== undefined ? pair.chosen : item.label === "up" ? item.answer : null;
          var rejected = pair.rejected !== undefined ? pair.rejected : item.label === "down" ? item.answer : null;
          var who = t(item.rater_role) + (item.rater ? " " + item.rater : "");
          var trust = item.trusted ? t("trusted") : t("untrusted");
          var ratings = item.customer_ratings > 1 ? t("; rated {0} times by its customer", item.customer_ratings) : "";
          var flags = (item.flags || []).map(function (f) { return t(f.replace(/_/g, " ")); });
          body.appendChild(el("tr", { "data-message": item.message_id, "data-review": item.review, "data-flags": (item.flags || []).join(" "), class: "review-" + item.review + (flags.length ? " flagged" : "") }, [
            el("td", {}, [el("input", { type: "checkbox", value: item.message_id, "aria-label": t("Select answer {0}", item.message_id) })]),
            el("td", {}, [text(item.question)]),
            el("td", {}, [text(chosen)]),
            el("td", {}, [text(rejected)]),
            el("td", {}, [
              el("div", { text: t("{0} by {1} ({2})", labels[item.label], who, trust + ratings) + (item.comment ? ": " + item.comment : "") }),
              flags.length ? el("div", { class: "flags", text: t("Flagged: {0}", flags.join(", ")) }) : null]),
            el("td", { text: t(item.review) + (item.reviewer ? " (" + item.reviewer + ")" : "") })]));
        });
        var last = Math.min(offset + pageSize, total);
        document.getElementById("inbox-page").textContent = total ? t("{0}–{1} of {2}", offset + 1, last, total) : "";
        document.getElementById("inbox-prev").disabled = offset === 0;
        document.getElementById("inbox-next").disabled = last >= total;
      }).catch(function (e) { inboxStatus.textContent = e.message; });
    }

    function decide(decision) {
      var ids = Array.prototype.map.call(document.querySelectorAll("#inbox tbody input:checked"), function (c) { return Number(c.value); });
      if (!ids.length) { inboxStatus.textContent = t("Select at least one answer first."); return; }
      api("POST", "/api/admin/feedback/review", { message_ids: ids, decision: decision }).then(function (r) {
        inboxStatus.textContent = r.reviewed === 1 ? t("1 answer {0}", t(r.decision)) : t("{0} answers {1}", r.reviewed, t(r.decision));
        return loadInbox();
      }, function (e) { inboxStatus.textContent = e.message; });
    }

    filter.addEventListener("submit", function (e) { e.preventDefault(); offset = 0; loadInbox(); });
    document.getElementById("select-all").addEventListener("change", function (e) {
      document.querySelectorAll("#inbox tbody input[type=checkbox]").forEach(function (c) { c.checked = e.target.checked; });
    });
    document.getElementById("accept-selected").addEventListener("click", function () { decide("accept"); });
    document.getElementById("reject-selected").addEventListener("click", function () { decide("reject"); });
    document.getElementById("inbox-prev").addEventListener("click", function () { offset = Math.max(0, offset - pageSize); loadInbox(); });
    document.getElementById("inbox-next").addEventListener("click", function () { offset += pageSize; loadInbox(); });
    loadInbox();
  }

  /* Datasets: the current one and each job's snapshot, previewed example by example. */
  var datasets = document.querySelector("[data-page=datasets]");
  if (datasets) {
    var shown = { id: null, kind: "sft", offset: 0 };
    var kindNames = { sft: "SFT examples", pairs: "Pairs", regression: "Regression set" };
    var turnsOf = function (example) {
      var turns = (example.messages || example.prompt || []).slice();
      if (example.chosen) turns = turns.concat([{ role: "chosen", content: example.chosen[0].content }, { role: "rejected", content: example.rejected[0].content }]);
      return turns;
    };

    function preview() {
      var path = "/api/admin/datasets/" + encodeURIComponent(shown.id) + "?kind=" + shown.kind + "&offset=" + shown.offset + "&limit=20";
      return api("GET", path).then(function (data) {
        document.getElementById("preview").hidden = false;
        document.getElementById("preview-title").textContent = (shown.id === "current" ? t("The next job's data") : t("Job {0}'s snapshot", shown.id)) + ": " + t(kindNames[shown.kind] || shown.kind);
        document.querySelectorAll("#preview-kinds button").forEach(function (b) { b.setAttribute("aria-pressed", String(b.getAttribute("data-kind") === shown.kind)); });
        document.getElementById("preview-count").textContent = data.total ? t("{0}–{1} of {2}", data.offset + 1, Math.min(data.offset + data.limit, data.total), data.total) : t("No examples");
        var list = document.getElementById("examples");
        list.textContent = "";
        list.setAttribute("start", String(data.offset + 1));
        data.examples.forEach(function (example) {
          var item = el("li");
          turnsOf(example).forEach(function (turn) {
            if (turn.role === "system") { item.appendChild(el("details", {}, [el("summary", { text: t("System prompt and passages") }), el("div", { class: "turn", text: turn.content })])); return; }
            item.appendChild(el("div", { class: "turn turn-" + turn.role }, [el("span", { class: "role", text: t(turn.role) }), turn.content]));
          });
          var k = example.kefu || {};
          item.appendChild(el("div", { class: "lineage", text: t("lineage: question {0}, answer {1}, model {2}", k.question_message_id, k.answer_message_id || k.rejected_message_id || k.chosen_message_id, (k.model_version || "").slice(0, 12)) }));
          list.appendChild(item);
        });
        document.getElementById("preview-prev").disabled = data.offset === 0;
        document.getElementById("preview-next").disabled = data.offset + data.limit >= data.total;
      });
    }

    function open(id) { shown.id = id; shown.offset = 0; preview(); }

    api("GET", "/api/admin/datasets").then(function (data) {
      var body = document.querySelector("#datasets tbody");
      var row = function (d, name, job, version) {
        var c = d.counts;
        var count = function (n) { return n === null || n === undefined ? "—" : String(n); };
        body.appendChild(el("tr", { "data-dataset": d.id }, [el("td", {}, [el("button", { type: "button", text: name, onclick: function () { open(d.id); } })]),
          el("td", { text: job }), el("td", { text: count(c.sft) }), el("td", { text: count(c.pairs) }), el("td", { text: count(c.regression) }), el("td", {}, [el("code", { text: (version || "").slice(0, 12) })])]));
      };
      row(data.current, t("Next job (now)"), "—", null);
      data.snapshots.forEach(function (s) { row(s, t("Snapshot of job {0}", s.job), t(s.status) + " (" + t(s.trigger) + ")", s.version); });
      open("current");
    });
    document.querySelectorAll("#preview-kinds button").forEach(function (b) {
      b.addEventListener("click", function () { shown.kind = b.getAttribute("data-kind"); shown.offset = 0; preview(); });
    });
    document.getElementById("preview-prev").addEventListener("click", function () { shown.offset = Math.max(0, shown.offset - 20); preview(); });
    document.getElementById("preview-next").addEventListener("click", function () { shown.offset += 20; preview(); });
  }
})();
