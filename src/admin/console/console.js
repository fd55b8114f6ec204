// The custom-pages console: the admin API's JSON, shown and changed through forms.
// Every value from the API is untrusted and goes into the page as text (textContent), never
// as HTML. The token lives in sessionStorage and travels only in the Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "custom-pages-token";
let current = null; // the domain being managed
let editing = null; // the rule being modified, or null for a new one (a rule is its code and its `when`)
let ruleTarget = "production"; // where the Customize Page dialog writes: "production" or "staging"
let rules = []; // the rules shown
let stagingRules = []; // the staging rules shown
let me = null; // the signed-in token: its name, permissions and domains (GET /api/token)

// Whether the signed-in token may do `permission` on `domain`, as the edge decides it (the
// console only hides what would be refused; the edge checks every call anyway).
function may(permission, domain) {
  if (!me) return false;
  const perms = me.permissions || [];
  const permitted = permission === "read" ? perms.length > 0 : perms.includes(permission) || perms.includes("admin");
  const name = String(domain).toLowerCase();
  return permitted && (me.domains || []).some((pattern) => {
    if (pattern === "*") return true;
    if (pattern.startsWith("*.")) return (name.endsWith(pattern.slice(1)) && name.length > pattern.length - 1) || name === pattern;
    return name === pattern;
  });
}

// Reads who is signed in, and shows it.
async function whoAmI() {
  const answer = await api("GET", "/api/token");
  me = answer.ok ? answer.json : null;
  $("signed-in").textContent = me ? "Signed in as " + me.name : "";
  const perms = (me && me.permissions) || [];
  $("add-domain-form").hidden = !(perms.includes("domains") || perms.includes("admin"));
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function button(label, onClick, described) {
  const b = el("button", label, { type: "button" });
  if (described) b.setAttribute("aria-description", described);
  b.addEventListener("click", onClick);
  return b;
}

// A call of the admin API: its status, its JSON ({} if it is not JSON) and its text (the
// answers that are YAML or a diff). `extra` adds headers (If-Match).
async function api(method, path, body, token, extra) {
  // The audit trail tells console changes from API calls by this header.
  const headers = {
    Authorization: "Bearer " + (token || sessionStorage.getItem(TOKEN_KEY) || ""),
    "X-Requested-By": "console",
    ...(extra || {}),
  };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let text = "";
  try { text = await resp.text(); } catch (_) { text = ""; }
  let json = null;
  try { json = JSON.parse(text); } catch (_) { json = null; }
  if (resp.status === 401 && !token) signOut("Your session ended: sign in again.");
  return { status: resp.status, ok: resp.ok, json: json && typeof json === "object" ? json : {}, text };
}

function show(view) {
  for (const id of ["sign-in-view", "domains-view", "manage-view"]) $(id).hidden = id !== view;
  $("nav").hidden = view === "sign-in-view";
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  current = null;
  $("token").value = "";
  $("sign-in-error").textContent = message || "";
  show("sign-in-view");
  $("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  const answer = await api("GET", "/api/status", undefined, token);
  if (answer.status === 401) {
    $("sign-in-error").textContent = "Wrong token: the edge refused it.";
    return;
  }
  if (!answer.ok) {
    $("sign-in-error").textContent = "The edge answered " + answer.status + ".";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in-error").textContent = "";
  await whoAmI();
  await showDomains();
}

// ------------------------------------------------------------------ Domain Names

// The Domain Names table shows one page of the server's list at a time (an edge may serve
// 100,000 domains): the filter is asked of the server, and Next/Previous follow its cursors.
const PAGE_SIZE = 50;
let pageCursors = [null]; // the cursor of each page shown so far; the last is the current one
let nextCursor = null;
let filterTimer = null;

async function showDomains() {
  pageCursors = [null];
  await showDomainPage();
}

async function showDomainPage() {
  show("domains-view");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const cursor = pageCursors[pageCursors.length - 1];
  if (cursor !== null) params.set("cursor", cursor);
  const filter = $("filter").value.trim().toLowerCase();
  if (filter !== "") params.set("filter", filter);
  const answer = await api("GET", "/api/domains?" + params.toString());
  const domains = answer.json.domains || [];
  nextCursor = answer.json.next || null;
  const first = (pageCursors.length - 1) * PAGE_SIZE;
  $("page-status").textContent = domains.length === 0
    ? (filter === "" ? "No domains" : "No domain matches the filter")
    : domains.length === 1 ? "Domain " + (first + 1)
    : "Domains " + (first + 1) + "–" + (first + domains.length);
  $("previous-page").disabled = pageCursors.length === 1;
  $("next-page").disabled = nextCursor === null;
  const rows = $("domain-rows");
  rows.replaceChildren();
  for (const d of domains) {
    const tr = el("tr", null, { "data-domain": d.domain });
    tr.append(el("th", d.domain, { scope: "row" }));
    const servers = (d.origin && d.origin.servers) || [];
    tr.append(el("td", servers.map((s) => s.server + " (" + s.state + ")").join(", ")));
    tr.append(el("td", (d.custom_pages || []).length));
    tr.append(el("td", d.https ? certificateText(d.certificate) : "no"));
    const actions = el("td");
    actions.append(button("Manage", () => showManage(d.domain), d.domain));
    if (d.certificate && d.certificate.source === "acme" && may("domains", d.domain)) {
      actions.append(button("Renew certificate", () => renewCertificate(d.domain), d.domain));
    }
    if (may("domains", d.domain)) actions.append(button("Delete", () => deleteDomain(d.domain), d.domain));
    tr.append(actions);
    rows.append(tr);
  }
}

// What the HTTPS column says of a domain's certificate: where it comes from, its state, until
// when, who issued it, when it renews, and the last ACME error.
function certificateText(c) {
  if (!c) return "yes";
  const day = (t) => (t ? t.slice(0, 10) : "");
  const parts = [c.source, c.state];
  if (c.not_after) parts.push("until " + day(c.not_after));
  if (c.next_renewal) parts.push("renews " + day(c.next_renewal));
  if (c.issuer) parts.push("issuer " + c.issuer);
  let text = parts.join(", ");
  if (c.last_error) text += " — last error: " + c.last_error;
  return text;
}

async function renewCertificate(domain) {
  const answer = await api("POST", "/api/domains/" + encodeURIComponent(domain) + "/certificate/renew");
  if (answer.status !== 200) alert((answer.json && answer.json.error) || "The certificate was not renewed");
  await showDomainPage();
}

function filterChanged() {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(showDomains, 200);
}

async function nextPage() {
  if (nextCursor === null) return;
  pageCursors.push(nextCursor);
  await showDomainPage();
}

async function previousPage() {
  if (pageCursors.length === 1) return;
  pageCursors.pop();
  await showDomainPage();
}

async function addDomain(event) {
  event.preventDefault();
  const name = $("new-domain").value.trim();
  const servers = $("new-servers").value.split(/[\s,]+/).filter((s) => s !== "");
  const answer = await api("PUT", "/api/domains/" + encodeURIComponent(name), { origin: { servers } });
  if (!answer.ok) {
    $("add-domain-error").textContent = describe(answer);
    return;
  }
  $("add-domain-error").textContent = "";
  $("new-domain").value = "";
  $("new-servers").value = "";
  await showDomains();
}

async function deleteDomain(name) {
  if (!window.confirm("Delete the domain " + name + " and its custom page rules?")) return;
  const answer = await api("DELETE", "/api/domains/" + encodeURIComponent(name));
  if (!answer.ok) window.alert(describe(answer));
  await showDomains();
}

function describe(answer) {
  const e = answer.json.error || "The edge answered " + answer.status + ".";
  return answer.json.field ? answer.json.field + ": " + e : e;
}

// ------------------------------------------------------------------ Manage → Custom Pages

function domainPath() {
  return "/api/domains/" + encodeURIComponent(current);
}

// A rule of production, or of staging when `target` is "staging".
function rulePath(code, target) {
  return domainPath() + (target === "staging" ? "/staging" : "") + "/custom-pages/" + encodeURIComponent(code);
}

// A rule's `when` with only what it sets, in a fixed order (null when it sets nothing): two
// rules of one code are the same rule when these are equal (the same lists in the same order).
function normalWhen(when) {
  if (!when) return null;
  const out = {};
  if (when.paths && when.paths.length) out.paths = [...when.paths];
  if (when.methods && when.methods.length) out.methods = [...when.methods];
  if (when.headers && Object.keys(when.headers).length) out.headers = { ...when.headers };
  return Object.keys(out).length ? out : null;
}

function sameWhen(a, b) {
  return JSON.stringify(normalWhen(a)) === JSON.stringify(normalWhen(b));
}

// What the "Only for" column says of a rule's `when`: "paths /shop/*, /cart; methods GET, HEAD;
// headers X-App: mobile", or "" for a rule of every request.
function whenText(when) {
  const w = normalWhen(when);
  if (!w) return "";
  const parts = [];
  if (w.paths) parts.push("paths " + w.paths.join(", "));
  if (w.methods) parts.push("methods " + w.methods.join(", "));
  if (w.headers) parts.push("headers " + Object.entries(w.headers).map(([name, value]) => name + ": " + value).join(", "));
  return parts.join("; ");
}

// A rule as messages and button descriptions name it: its code, and its conditions if any.
function ruleName(code, when) {
  const text = whenText(when);
  return text === "" ? String(code) : code + " (only for " + text + ")";
}

// The body of a DELETE of the rule of `when` (none for the rule of every request).
function deleteBody(when) {
  const w = normalWhen(when);
  return w ? { when: w } : undefined;
}

// The Mode column: "skip" for a rule that serves no page.
function modeText(rule) {
  if (rule.skip) return "skip";
  return rule.redirect ? "Redirect " + rule.redirect : "In place";
}

async function showManage(name) {
  current = name;
  $("manage-title").textContent = "Manage " + name;
  $("customize").hidden = !may("rules", name);
  for (const id of ["pages-message", "versions-message", "versions-error", "diff-message", "staging-message", "staging-error"])
    $(id).textContent = "";
  $("version-title").hidden = true;
  $("version-yaml").hidden = true;
  $("diff").hidden = true;
  clearTrace();
  errorsWindow = "hour";
  show("manage-view");
  await selectTab("tab-pages");
}

// ------------------------------------------------------------------ Manage tabs

const TABS = {
  "tab-pages": () => loadRules(),
  "tab-versions": () => loadVersions(),
  "tab-staging": () => loadStaging(),
  "tab-errors": () => loadErrors(),
};

// Shows the tab `id` and its panel, and loads what the panel shows.
async function selectTab(id, focus) {
  for (const tab of Object.keys(TABS)) {
    const selected = tab === id;
    $(tab).setAttribute("aria-selected", String(selected));
    $(tab).tabIndex = selected ? 0 : -1;
    $($(tab).getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) $(id).focus();
  await TABS[id]();
}

// Arrow keys, Home and End move between the tabs (the selected tab is the one in the Tab order).
function tabKey(event) {
  const ids = Object.keys(TABS);
  const at = ids.indexOf(event.target.id);
  if (at < 0) return;
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1 + ids.length, Home: 0, End: ids.length - 1 }[event.key];
  if (to === undefined) return;
  event.preventDefault();
  selectTab(ids[to % ids.length], true);
}

function activityChart(perMinute) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "activity");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "24");
  svg.setAttribute("role", "img");
  const total = perMinute.reduce((a, b) => a + b, 0);
  svg.setAttribute("aria-label", total + " served in the last hour, per minute");
  const top = Math.max(1, ...perMinute);
  perMinute.forEach((n, i) => {
    const r = document.createElementNS(ns, "rect");
    const h = Math.round((n / top) * 22);
    r.setAttribute("x", String(i * 2));
    r.setAttribute("y", String(24 - h));
    r.setAttribute("width", "2");
    r.setAttribute("height", String(h));
    svg.append(r);
  });
  return svg;
}

// The cells every rule table starts with: status code, its conditions, URL.
function ruleRow(rule) {
  const code = String(rule.code);
  const tr = el("tr", null, { "data-code": code });
  tr.append(el("th", code, { scope: "row" }));
  tr.append(el("td", whenText(rule.when), { class: "only-for" }));
  tr.append(el("td", rule.url || "—"));
  return tr;
}

async function loadRules() {
  const answer = await api("GET", "/api/domains/" + encodeURIComponent(current) + "/custom-pages");
  const rows = $("rule-rows");
  rows.replaceChildren();
  rules = answer.json.custom_pages || [];
  for (const rule of rules) {
    const code = String(rule.code);
    const name = ruleName(code, rule.when);
    const tr = ruleRow(rule);
    const mode = el("td", modeText(rule));
    const also = [
      ...Object.keys(rule.variants || {}),
      ...Object.keys(rule.languages || {}).map((tag) => "lang " + tag),
    ];
    if (also.length) mode.append(el("div", "also: " + also.join(", "), { class: "muted" }));
    tr.append(mode);
    tr.append(el("td", rule.status || "—"));
    tr.append(el("td", rule.source || "any"));
    const page = el("td");
    if (rule.page) {
      page.append(el("div", rule.page.state));
      if (rule.page.restored) page.append(el("div", "kept from before the restart", { class: "muted" }));
      page.append(el("div", "fetched at " + (rule.page.fetched_at || "never"), { class: "muted fetched-at" }));
      if (rule.page.size !== null && rule.page.size !== undefined)
        page.append(el("div", rule.page.size + " bytes, " + (rule.page.content_type || ""), { class: "muted" }));
      if (rule.page.last_error) page.append(el("div", rule.page.last_error, { class: "error" }));
    } else {
      page.append(el("div", rule.skip ? "— (skip)" : "— (redirect)"));
    }
    tr.append(page);
    const activity = el("td");
    const served = rule.served_last_hour;
    activity.append(el("span", served === null || served === undefined ? "—" : served));
    activity.append(activityChart(rule.served_per_minute || []));
    tr.append(activity);
    const actions = el("td");
    if (may("rules", current)) {
      actions.append(button("Modify", () => openDialog(rule), name));
      actions.append(button("Delete", () => deleteRule(rule, "production"), name));
    }
    // Refresh and Preview name a rule by its code alone: the rule of every request.
    if (rule.page && !normalWhen(rule.when)) {
      if (may("cache", current)) actions.append(button("Refresh", () => refreshRule(code), code));
      actions.append(button("Preview", () => preview(code), code));
    }
    tr.append(actions);
    rows.append(tr);
  }
}

// Where each rule table says what happened, and how it reloads.
const RULE_TABLES = {
  production: { what: "custom page rule", done: "Rule", error: "pages-message", message: "pages-message", reload: () => loadRules() },
  staging: { what: "staging rule", done: "Staging rule", error: "staging-error", message: "staging-message", reload: () => loadStaging() },
};

// Deletes a rule of production or staging (`target`), once confirmed.
async function deleteRule(rule, target) {
  const table = RULE_TABLES[target];
  const name = ruleName(rule.code, rule.when);
  if (!window.confirm("Delete the " + table.what + " for " + name + " of " + current + "?")) return;
  const answer = await api("DELETE", rulePath(rule.code, target), deleteBody(rule.when));
  // Cleared first: production says both in one element.
  if (answer.ok) {
    $(table.error).textContent = "";
    $(table.message).textContent = table.done + " " + name + " deleted.";
  } else {
    $(table.message).textContent = "";
    $(table.error).textContent = describe(answer);
  }
  await table.reload();
}

async function refreshRule(code) {
  const answer = await api("POST", rulePath(code, "production") + "/refresh");
  $("pages-message").textContent = answer.ok ? "Page for " + code + " fetched again." : describe(answer);
  await loadRules();
}

async function preview(code) {
  const answer = await api("GET", rulePath(code, "production") + "/page");
  if (!answer.ok) {
    $("pages-message").textContent = describe(answer);
    return;
  }
  $("preview-url").textContent = answer.json.url + " (" + answer.json.content_type + ")";
  // A sandboxed frame without scripts; its text is the stored copy, not a live fetch.
  $("preview-frame").srcdoc = answer.json.text;
  $("preview-dialog").showModal();
  $("preview-close").focus();
}

// ------------------------------------------------------------------ Customize Page dialog

const COMMON_CODES = ["400", "403", "404", "405", "414", "416", "500", "501", "502", "503", "504"];

function clearErrors() {
  for (const id of ["rule-code-error", "rule-url-error", "rule-redirect-error", "rule-status-error", "rule-source-error", "rule-variants-error", "rule-languages-error", "rule-language-error", "rule-paths-error", "rule-methods-error", "rule-headers-error", "rule-when-error", "rule-error"])
    $(id).textContent = "";
}

function setPattern(visible) {
  $("rule-pattern").hidden = !visible;
  $("rule-pattern-label").hidden = !visible;
}

// Opens the Customize Page dialog for `rule` (null: a new one) of production, or of staging
// when `target` is "staging".
function openDialog(rule, target) {
  clearErrors();
  editing = rule || null;
  ruleTarget = target === "staging" ? "staging" : "production";
  $("rule-target").textContent = ruleTarget === "staging"
    ? "This rule is saved in the staging configuration of " + current + "; production does not change until you publish it."
    : "";
  $("rule-target").hidden = ruleTarget !== "staging";
  const code = rule ? String(rule.code) : "404";
  if (COMMON_CODES.includes(code)) {
    $("rule-code").value = code;
    $("rule-pattern").value = "";
    setPattern(false);
  } else {
    $("rule-code").value = "pattern";
    $("rule-pattern").value = code;
    setPattern(true);
  }
  $("rule-url").value = rule && rule.url ? rule.url : "";
  $("rule-mode").value = rule && rule.redirect ? String(rule.redirect) : "";
  $("rule-status").value = rule && rule.status ? String(rule.status) : "";
  $("rule-source").value = rule && rule.source ? rule.source : "any";
  const lines = (map) => Object.entries(map || {}).map(([name, url]) => name + " " + url).join("\n");
  // A variant is its URL, or {url, languages}: one line for the page, one per translation.
  const variantLines = (map) => Object.entries(map || {}).flatMap(([media, v]) =>
    typeof v === "string" ? [media + " " + v]
      : [media + " " + v.url, ...Object.entries(v.languages || {}).map(([tag, url]) => media + " " + tag + " " + url)]
  ).join("\n");
  $("rule-variants").value = variantLines(rule && rule.variants);
  $("rule-languages").value = lines(rule && rule.languages);
  $("rule-inline").checked = !(rule && rule.inline === false);
  $("rule-language").value = rule && rule.language ? rule.language : "";
  const when = normalWhen(rule && rule.when) || {};
  $("rule-paths").value = (when.paths || []).join("\n");
  $("rule-methods").value = (when.methods || []).join(", ");
  $("rule-headers").value = Object.entries(when.headers || {}).map(([name, value]) => name + ": " + value).join("\n");
  $("rule-skip").checked = Boolean(rule && rule.skip);
  $("rule-dialog").showModal();
  $("rule-code").focus();
}

const FIELD_ERRORS = {
  code: "rule-code-error", url: "rule-url-error", redirect: "rule-redirect-error", status: "rule-status-error",
  source: "rule-source-error", variants: "rule-variants-error", languages: "rule-languages-error", language: "rule-language-error",
};
const WHEN_ERRORS = { paths: "rule-paths-error", methods: "rule-methods-error", headers: "rule-headers-error" };

// Where the dialog shows a refused PUT's error: at the field it names. A condition's error names
// `when` (its key, in the field or the details, says which of paths, methods or headers).
function ruleErrorId(answer) {
  const field = String(answer.json.field || "");
  if (FIELD_ERRORS[field]) return FIELD_ERRORS[field];
  const first = field.split(/[.[]/)[0];
  if (first !== "when" && first !== "skip" && !WHEN_ERRORS[first]) return "rule-error";
  const details = Array.isArray(answer.json.details) ? answer.json.details : [];
  const keys = [field, ...details.map((d) => String((d && d.key) || ""))].join(" ");
  for (const [part, id] of Object.entries(WHEN_ERRORS)) if (keys.includes(part)) return id;
  return "rule-when-error";
}

async function submitRule(event) {
  event.preventDefault();
  clearErrors();
  const code = $("rule-code").value === "pattern" ? $("rule-pattern").value.trim() : $("rule-code").value;
  const url = $("rule-url").value.trim();
  const skip = $("rule-skip").checked;
  const body = { source: $("rule-source").value };
  // A skip rule serves no page: its URL may stay empty (the edge refuses one given with skip).
  if (url !== "" || !skip) body.url = url;
  if (skip) body.skip = true;
  if ($("rule-mode").value !== "") body.redirect = Number($("rule-mode").value);
  if ($("rule-status").value !== "") body.status = Number($("rule-status").value);
  if (code === "") {
    $("rule-code-error").textContent = "Enter a status code or a pattern such as 5xx.";
    return;
  }
  // Only for: a path glob per line; methods separated by commas or spaces; "Name: value" per line.
  const lines = (id) => $(id).value.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const when = {};
  const paths = lines("rule-paths");
  if (paths.length) when.paths = paths;
  const methods = $("rule-methods").value.split(/[\s,]+/).filter((m) => m !== "").map((m) => m.toUpperCase());
  if (methods.length) when.methods = methods;
  const headers = {};
  for (const line of lines("rule-headers")) {
    const colon = line.indexOf(":");
    if (colon <= 0) {
      $("rule-headers-error").textContent = "Write each header as its name, a colon, then its value (* for any value): " + line;
      return;
    }
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }
  if (Object.keys(headers).length) when.headers = headers;
  if (Object.keys(when).length) body.when = when;
  // A rule is its code and its `when`: a PUT of another pair adds a rule beside the one edited.
  const previous = editing ? { code: String(editing.code), when: editing.when } : null;
  const moved = previous === null || previous.code !== code || !sameWhen(previous.when, body.when);
  const target = ruleTarget;
  const shown = target === "staging" ? stagingRules : rules;
  if (moved && shown.some((r) => String(r.code) === code && sameWhen(r.when, body.when))) {
    $("rule-code-error").textContent = body.when
      ? "There is a rule for " + code + " with these conditions already: modify that one."
      : "There is a rule for " + code + " already: modify that one.";
    return;
  }
  // "name URL" per line, in order (the first variant wins a tie).
  const entries = (text) => {
    const map = {};
    for (const line of text.split("\n").map((l) => l.trim()).filter((l) => l !== "")) {
      const [name, url] = line.split(/\s+/, 2);
      map[name] = url || "";
    }
    return map;
  };
  // "media URL" or "media tag URL" per line.
  const variants = {};
  for (const line of $("rule-variants").value.split("\n").map((l) => l.trim()).filter((l) => l !== "")) {
    const words = line.split(/\s+/);
    const media = words[0];
    if (words.length >= 3) {
      const variant = typeof variants[media] === "object" ? variants[media] : { url: variants[media] || "", languages: {} };
      variant.languages[words[1]] = words[2];
      variants[media] = variant;
    } else if (typeof variants[media] === "object") {
      variants[media].url = words[1] || "";
    } else {
      variants[media] = words[1] || "";
    }
  }
  const languages = entries($("rule-languages").value);
  if (!$("rule-inline").checked) body.inline = false;
  if (Object.keys(variants).length) body.variants = variants;
  if (Object.keys(languages).length) body.languages = languages;
  if ($("rule-language").value.trim() !== "") body.language = $("rule-language").value.trim();
  const answer = await api("PUT", rulePath(code, target), body);
  if (!answer.ok) {
    $(ruleErrorId(answer)).textContent = answer.json.error || "The edge answered " + answer.status + ".";
    return;
  }
  let message = "Rule " + ruleName(code, body.when) + (target === "staging" ? " saved in staging." : " saved.");
  if (previous !== null && moved) {
    const removed = await api("DELETE", rulePath(previous.code, target), deleteBody(previous.when));
    if (!removed.ok) message += " The rule for " + ruleName(previous.code, previous.when) + " could not be removed: " + describe(removed);
  }
  $("rule-dialog").close();
  if (target === "staging") {
    $("staging-error").textContent = "";
    $("staging-message").textContent = message;
    await loadStaging();
  } else {
    $("pages-message").textContent = message;
    await loadRules();
  }
}

// ------------------------------------------------------------------ Manage → Versions

let versionsCurrent = null; // the domain's current version, as the list shown says
let versionsNext = null; // the `before` of the next page of versions, or null
let rollbackTo = null; // the version the Roll back dialog is for

async function loadVersions(more) {
  const params = new URLSearchParams({ limit: "20" });
  if (more && versionsNext !== null) params.set("before", String(versionsNext));
  const answer = await api("GET", domainPath() + "/versions?" + params.toString());
  const rows = $("version-rows");
  if (!more) {
    rows.replaceChildren();
    $("diff-from").replaceChildren();
    $("diff-to").replaceChildren();
  }
  if (!answer.ok) {
    versionsNext = null;
    $("more-versions").hidden = true;
    $("versions-error").textContent = describe(answer);
    return;
  }
  if (!more) versionsCurrent = answer.json.current;
  versionsNext = answer.json.next === undefined ? null : answer.json.next;
  $("more-versions").hidden = versionsNext === null;
  for (const v of answer.json.versions || []) {
    const n = String(v.version);
    const tr = el("tr", null, { "data-version": n });
    if (v.version === versionsCurrent) tr.setAttribute("aria-current", "true");
    tr.append(el("th", n, { scope: "row" }));
    const when = el("td");
    when.append(el("time", v.at, { datetime: v.at }));
    tr.append(when);
    tr.append(el("td", v.by));
    const comment = el("td", v.comment === null || v.comment === undefined ? "—" : v.comment);
    if (v.deleted) comment.append(el("div", "the domain was deleted", { class: "muted" }));
    tr.append(comment);
    const actions = el("td");
    if (!v.deleted) {
      actions.append(button("View", () => viewVersion(n), "version " + n));
      if (may("rules", current)) actions.append(button("Rollback", () => openRollback(n), "to version " + n));
      $("diff-from").append(el("option", n, { value: n }));
      $("diff-to").append(el("option", n, { value: n }));
    }
    tr.append(actions);
    rows.append(tr);
  }
  // By default the diff compares the newest version with the one before it.
  if (!more) {
    const options = $("diff-to").options;
    if (options.length > 0) $("diff-to").selectedIndex = 0;
    if (options.length > 1) $("diff-from").selectedIndex = 1;
  }
}

async function viewVersion(n) {
  const answer = await api("GET", domainPath() + "/versions/" + encodeURIComponent(n));
  if (!answer.ok) {
    $("versions-error").textContent = describe(answer);
    return;
  }
  $("versions-error").textContent = "";
  $("version-title").textContent = "Version " + n;
  $("version-title").hidden = false;
  $("version-yaml").textContent = answer.text;
  $("version-yaml").hidden = false;
  $("version-yaml").focus();
}

async function showDiff(event) {
  event.preventDefault();
  const from = $("diff-from").value;
  const to = $("diff-to").value;
  if (from === "" || to === "") return;
  const answer = await api("GET", domainPath() + "/versions/" + encodeURIComponent(from) + "/diff/" + encodeURIComponent(to));
  const pre = $("diff");
  pre.replaceChildren();
  if (!answer.ok) {
    pre.hidden = true;
    $("diff-message").textContent = "";
    $("versions-error").textContent = describe(answer);
    return;
  }
  $("versions-error").textContent = "";
  // One span a line, classed by its first character; the text stays the diff's, line for line.
  const text = answer.text.endsWith("\n") ? answer.text.slice(0, -1) : answer.text;
  for (const line of text === "" ? [] : text.split("\n")) {
    const kind = line.startsWith("+++") || line.startsWith("---") ? "diff-file"
      : line.startsWith("@@") ? "diff-hunk"
      : line.startsWith("+") ? "diff-add"
      : line.startsWith("-") ? "diff-del" : "diff-same";
    pre.append(el("span", line, { class: kind }), "\n");
  }
  pre.hidden = answer.text === "";
  $("diff-message").textContent = answer.text === ""
    ? "Versions " + from + " and " + to + " are the same."
    : "Changes from version " + from + " to version " + to + ".";
}

function openRollback(n) {
  rollbackTo = n;
  $("rollback-title").textContent = "Roll back to version " + n;
  $("rollback-summary").textContent = "A new version of " + current + " will be made, equal to version " + n
    + ". The current version is " + versionsCurrent + ".";
  $("rollback-comment").value = "";
  $("rollback-error").textContent = "";
  $("rollback-dialog").showModal();
  $("rollback-comment").focus();
}

async function submitRollback(event) {
  event.preventDefault();
  const to = Number(rollbackTo);
  const body = { to };
  const comment = $("rollback-comment").value.trim();
  if (comment !== "") body.comment = comment;
  // The version the list showed: the edge refuses (409) if another change came since.
  const answer = await api("POST", domainPath() + "/rollback", body, undefined, { "If-Match": String(versionsCurrent) });
  if (answer.status === 409) {
    $("rollback-dialog").close();
    $("versions-message").textContent = "";
    $("versions-error").textContent = describe(answer) + " The list shows the versions as they are now.";
    await loadVersions();
    return;
  }
  if (!answer.ok) {
    $("rollback-error").textContent = describe(answer);
    return;
  }
  $("rollback-dialog").close();
  $("versions-error").textContent = "";
  $("versions-message").textContent = "Rolled back to version " + to + ": version " + answer.json.version + " is current.";
  await loadVersions();
  await loadRules();
}

// ------------------------------------------------------------------ Why this error page

// A step of a trace or of a request look-up (the API's JSON) as one line of text that starts
// with the step's name: "rule: 404#1 (paths /shop/*)", "page: in place http://…/404.html, fresh".
const PAGE_KINDS = { in_place: "in place", redirect: "redirect", problem: "problem details", default: "built-in page", none: "none" };

function present(value) {
  return value !== null && value !== undefined && value !== "";
}

function stepDetail(s) {
  const parts = [];
  switch (s.step) {
    case "route":
      parts.push(String(s.domain) + (present(s.match) ? " (" + s.match + ")" : ""));
      if (present(s.host) && s.host !== s.domain) parts.push("host " + s.host);
      if (s.staging) parts.push("staging");
      break;
    case "connection":
      parts.push(String(s.scheme), String(s.outcome) + (present(s.location) ? " to " + s.location : ""));
      break;
    case "cache":
      parts.push(String(s.state));
      if (present(s.age)) parts.push("age " + s.age + " s");
      if (present(s.key)) parts.push("key " + s.key);
      break;
    case "origin":
      parts.push(present(s.status) ? String(s.status) : "no answer");
      if (s.simulated) parts.push("simulated");
      if (s.from_cache) parts.push("from the cache");
      if (present(s.server)) parts.push("server " + s.server);
      if (present(s.error)) parts.push("error: " + s.error);
      break;
    case "rule": {
      if (s.matched) {
        const when = typeof s.when === "string" ? s.when : whenText(s.when);
        parts.push(String(present(s.rule) ? s.rule : s.code) + (present(when) ? " (" + when + ")" : ""));
        if (s.skip) parts.push("skip: no custom page");
        if (s.opted_out) parts.push("opted out by the origin (Custom-Page: off)");
      } else if (s.opted_out) {
        parts.push("none, opted out by the origin (Custom-Page: off)");
      } else {
        parts.push("none" + (present(s.reason) ? " (" + s.reason + ")" : ""));
      }
      break;
    }
    case "page":
      if (s.kind === "redirect") parts.push("redirect to " + (present(s.location) ? s.location : s.url));
      else parts.push(Object.hasOwn(PAGE_KINDS, s.kind) ? PAGE_KINDS[s.kind] : String(s.kind));
      if (s.kind !== "redirect" && present(s.url)) parts[0] += " " + s.url;
      if (present(s.variant)) parts.push(s.variant);
      if (present(s.language)) parts.push("language " + s.language);
      if (present(s.state)) parts.push(String(s.state).replace(/_/g, " "));
      if (present(s.fetched_at)) parts.push("fetched at " + s.fetched_at);
      break;
    case "response":
      parts.push(String(s.status));
      break;
    default: {
      const rest = { ...s };
      delete rest.step;
      parts.push(JSON.stringify(rest));
    }
  }
  return parts.join(", ");
}

// Shows `steps` in the ordered list `list`, one item a step; the headers of the origin's
// answer and of the response under their step.
function showSteps(list, steps) {
  list.replaceChildren();
  for (const s of Array.isArray(steps) ? steps : []) {
    const item = el("li", String(s.step) + ": " + stepDetail(s), { "data-step": String(s.step) });
    const headers = s.headers && typeof s.headers === "object" ? Object.entries(s.headers) : [];
    if (headers.length) item.append(el("div", headers.map(([name, value]) => name + ": " + value).join("; "), { class: "muted" }));
    list.append(item);
  }
}

// ------------------------------------------------------------------ Manage → Test a URL

function clearTrace() {
  $("trace-url").value = "";
  $("trace-origin-status").value = "";
  $("trace-error").textContent = "";
  $("trace-result").hidden = true;
  $("trace-steps").replaceChildren();
  $("trace-preview").replaceWith(previewFrame(""));
}

// A new frame for the preview (rather than a new srcdoc in the old one, which Chromium may
// leave unpainted when it loaded while hidden): sandboxed, so the page runs no script and has
// no origin of its own.
function previewFrame(html) {
  const frame = el("iframe", null, { id: "trace-preview", title: "Page preview", sandbox: "" });
  frame.hidden = html === "";
  frame.srcdoc = html;
  return frame;
}

// Asks the edge what it does for the path in the form (POST .../trace), and shows the steps,
// the final status and the start of the body in a sandboxed frame (no scripts, no same origin).
async function runTrace(event) {
  if (event) event.preventDefault();
  const url = $("trace-url").value.trim();
  if (url === "") {
    $("trace-error").textContent = "Enter a path, such as /shop/missing.";
    return;
  }
  const body = { url };
  const originStatus = $("trace-origin-status").value.trim();
  if (originStatus !== "") body.origin_status = Number(originStatus);
  $("trace-error").textContent = "";
  const domain = current;
  const answer = await api("POST", domainPath() + "/trace", body);
  if (domain !== current) return;
  if (!answer.ok) {
    $("trace-result").hidden = true;
    $("trace-error").textContent = describe(answer);
    return;
  }
  const trace = answer.json;
  const steps = Array.isArray(trace.steps) ? trace.steps : [];
  $("trace-status").textContent = "Status " + trace.status + " for " + url + " on " + (trace.host || current)
    + (body.origin_status ? " (the origin's answer simulated: " + body.origin_status + ")" : "");
  showSteps($("trace-steps"), steps);
  const response = steps.find((s) => s.step === "response");
  const start = response && typeof response.body_start === "string" ? response.body_start : "";
  $("trace-result").hidden = false;
  $("trace-preview").replaceWith(previewFrame(start));
}

// The Trace button of a top error path: that path in the Test a URL form, traced for real.
async function traceFromErrors(path) {
  $("trace-url").value = path;
  $("trace-origin-status").value = "";
  await runTrace();
  $("trace-section").scrollIntoView({ block: "nearest" });
}

// ------------------------------------------------------------------ Manage → Errors

let errorsWindow = "hour"; // "hour" or "day"

function byteText(n) {
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? String(value) : value.toFixed(1)) + " " + units[unit];
}

// A bar per bucket, its 4xx and 5xx stacked; the role and name say what it is, the total and
// the table below say it in words.
function errorsChart(series) {
  const ns = "http://www.w3.org/2000/svg";
  const make = (tag, attrs) => {
    const node = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    return node;
  };
  const [width, plot, height] = [480, 100, 116];
  const svg = make("svg", {
    class: "errors-chart", viewBox: "0 0 " + width + " " + height, role: "img",
    "aria-label": "Errors over time", "aria-describedby": "errors-total",
  });
  const count = (p, key) => Math.max(0, Number(p && p[key]) || 0);
  const top = Math.max(1, ...series.map((p) => count(p, "4xx") + count(p, "5xx")));
  const slot = width / Math.max(1, series.length);
  const time = (at) => (typeof at === "string" && at.length >= 16 ? at.slice(11, 16) : String(at));
  series.forEach((p, i) => {
    const [client, server] = [count(p, "4xx"), count(p, "5xx")];
    const [h4, h5] = [Math.round((client / top) * plot), Math.round((server / top) * plot)];
    const group = make("g", { class: "bucket" });
    const title = make("title", {});
    title.textContent = time(p.at) + ": " + client + " 4xx, " + server + " 5xx";
    group.append(title);
    group.append(make("rect", { class: "bar-4xx", x: i * slot + 1, y: plot - h4, width: Math.max(1, slot - 2), height: h4 }));
    group.append(make("rect", { class: "bar-5xx", x: i * slot + 1, y: plot - h4 - h5, width: Math.max(1, slot - 2), height: h5 }));
    svg.append(group);
  });
  svg.append(make("line", { class: "axis", x1: 0, y1: plot + 0.5, x2: width, y2: plot + 0.5 }));
  if (series.length) {
    const first = make("text", { class: "axis-label", x: 1, y: height - 2, "text-anchor": "start" });
    first.textContent = time(series[0].at);
    const last = make("text", { class: "axis-label", x: width - 1, y: height - 2, "text-anchor": "end" });
    last.textContent = time(series[series.length - 1].at);
    svg.append(first, last);
  }
  return svg;
}

async function loadErrors() {
  const hourly = errorsWindow === "hour";
  $("errors-hour").setAttribute("aria-pressed", String(hourly));
  $("errors-day").setAttribute("aria-pressed", String(!hourly));
  $("errors-bucket").textContent = hourly ? "5 minutes" : "hour";
  const answer = await api("GET", domainPath() + "/errors");
  const rows = $("error-rows");
  rows.replaceChildren();
  $("errors-chart").replaceChildren();
  if (!answer.ok) {
    $("errors-total").textContent = "";
    $("errors-memory").textContent = "";
    $("errors-none").hidden = true;
    $("errors-error").textContent = describe(answer);
    return;
  }
  $("errors-error").textContent = "";
  const data = answer.json;
  const w = (data && data[errorsWindow]) || {};
  const series = Array.isArray(w.series) ? w.series : [];
  const top = Array.isArray(w.top) ? w.top : [];
  const span = hourly ? "the last hour" : "the last 24 hours";
  const total = Number(w.total) || 0;
  $("errors-total").textContent = total + (total === 1 ? " error response in " : " error responses in ") + span + ".";
  $("errors-chart").append(errorsChart(series));
  for (const t of top) {
    const path = String(t.path);
    const tr = el("tr", null, { "data-path": path });
    tr.append(el("th", path, { scope: "row" }));
    tr.append(el("td", t.count));
    tr.append(el("td", Object.entries(t.statuses || {}).map(([status, n]) => status + " (" + n + ")").join(", ")));
    tr.append(el("td", t.custom_page));
    const actions = el("td");
    actions.append(button("Trace", () => traceFromErrors(path), path));
    tr.append(actions);
    rows.append(tr);
  }
  $("errors-none").textContent = "No error responses in " + span + ".";
  $("errors-none").hidden = top.length > 0;
  $("errors-memory").textContent = present(data.memory_bytes)
    ? "Counted in " + byteText(data.memory_bytes) + " of at most " + byteText(data.memory_limit_bytes)
      + " (every domain's paths together); with many distinct paths, the counts of the rarest are estimates."
    : "";
}

async function showErrorsWindow(which) {
  errorsWindow = which;
  await loadErrors();
}

// ------------------------------------------------------------------ Domain Names → Look up a request

async function lookUpRequest(event) {
  event.preventDefault();
  const id = $("lookup-id").value.trim();
  const list = $("lookup-steps");
  list.replaceChildren();
  list.hidden = true;
  $("lookup-summary").hidden = true;
  if (id === "") return;
  const answer = await api("GET", "/api/requests/" + encodeURIComponent(id));
  if (answer.status === 404) {
    $("lookup-message").textContent = "Request " + id + " not found: the edge keeps only its recent error responses, of the domains you may read.";
    return;
  }
  if (!answer.ok) {
    $("lookup-message").textContent = describe(answer);
    return;
  }
  const r = answer.json;
  $("lookup-message").textContent = "Request " + (r.request_id || id) + " found" + (present(r.edge) ? " on edge " + r.edge : "") + ".";
  $("lookup-summary").textContent = r.method + " " + r.url + " on " + r.domain + " at " + r.time + ": " + r.status;
  $("lookup-summary").hidden = false;
  showSteps(list, r.steps);
  list.hidden = false;
}

// ------------------------------------------------------------------ Manage → Staging

let staging = null; // the staging configuration shown (GET .../staging), or null

async function loadStaging() {
  const answer = await api("GET", domainPath() + "/staging");
  const mayChange = may("rules", current);
  $("customize-staging").hidden = !mayChange;
  $("staging-actions").hidden = !mayChange;
  const rows = $("staging-rule-rows");
  rows.replaceChildren();
  if (answer.status === 404) {
    staging = null;
    stagingRules = [];
    $("staging-details").hidden = true;
    $("staging-none").textContent = current + " has no staging configuration."
      + (mayChange ? " Customize a rule here to start one as a copy of production." : "");
    $("staging-none").hidden = false;
    return;
  }
  if (!answer.ok) {
    $("staging-details").hidden = true;
    $("staging-error").textContent = describe(answer);
    return;
  }
  staging = answer.json;
  stagingRules = (staging.spec && staging.spec.custom_pages) || [];
  $("staging-none").hidden = true;
  $("staging-details").hidden = false;
  $("staging-key").textContent = staging.key;
  $("staging-based-on").textContent = "(a copy of version " + staging.based_on + ")";
  $("staging-preview-line").textContent = staging.preview;
  for (const rule of stagingRules) {
    const code = String(rule.code);
    const name = ruleName(code, rule.when);
    const tr = ruleRow(rule);
    tr.append(el("td", modeText(rule)));
    const actions = el("td");
    if (mayChange) {
      actions.append(button("Modify", () => openDialog(rule, "staging"), name));
      actions.append(button("Delete", () => deleteRule(rule, "staging"), name));
    }
    tr.append(actions);
    rows.append(tr);
  }
}


// Opens a confirmation dialog of the staging panel; its panel buttons are hidden meanwhile,
// so the dialog's button is the only one of its name.
function confirmStaging(which, summary) {
  $(which + "-summary").textContent = summary;
  $(which + "-error").textContent = "";
  if ($(which + "-comment")) $(which + "-comment").value = "";
  $("staging-actions").hidden = true;
  $(which + "-dialog").showModal();
}

function openPublish() {
  confirmStaging("publish", "Production of " + current + " becomes the staging configuration, as a new version; staging ends.");
}

function openDiscard() {
  confirmStaging("discard", "The staging configuration of " + current + " and its key are thrown away; production does not change.");
}

// A publish or discard the edge refused: the error in the panel (409 when production changed
// since staging began).
async function stagingRefused(which, answer) {
  $(which + "-dialog").close();
  $("staging-message").textContent = "";
  $("staging-error").textContent = describe(answer);
  await loadStaging();
}

async function submitPublish(event) {
  event.preventDefault();
  const comment = $("publish-comment").value.trim();
  const answer = await api("POST", domainPath() + "/staging/publish", comment === "" ? undefined : { comment });
  if (!answer.ok) return stagingRefused("publish", answer);
  $("publish-dialog").close();
  $("staging-error").textContent = "";
  $("staging-message").textContent = "Staging published: version " + answer.json.version + " is current.";
  await loadStaging();
  await loadRules();
  await loadVersions();
}

async function submitDiscard(event) {
  event.preventDefault();
  const answer = await api("DELETE", domainPath() + "/staging");
  if (!answer.ok) return stagingRefused("discard", answer);
  $("discard-dialog").close();
  $("staging-error").textContent = "";
  $("staging-message").textContent = "Staging discarded.";
  await loadStaging();
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("nav-domains").addEventListener("click", showDomains);
  $("filter").addEventListener("input", filterChanged);
  $("next-page").addEventListener("click", nextPage);
  $("previous-page").addEventListener("click", previousPage);
  $("add-domain-form").addEventListener("submit", addDomain);
  $("customize").addEventListener("click", () => openDialog(null, "production"));
  for (const tab of Object.keys(TABS)) {
    $(tab).addEventListener("click", () => selectTab(tab));
    $(tab).addEventListener("keydown", tabKey);
  }
  $("more-versions").addEventListener("click", () => loadVersions(true));
  $("diff-form").addEventListener("submit", showDiff);
  $("rollback-form").addEventListener("submit", submitRollback);
  $("rollback-cancel").addEventListener("click", () => $("rollback-dialog").close());
  $("customize-staging").addEventListener("click", () => openDialog(null, "staging"));
  $("publish").addEventListener("click", openPublish);
  $("discard").addEventListener("click", openDiscard);
  $("publish-form").addEventListener("submit", submitPublish);
  $("discard-form").addEventListener("submit", submitDiscard);
  for (const which of ["publish", "discard"]) {
    $(which + "-cancel").addEventListener("click", () => $(which + "-dialog").close());
    $(which + "-dialog").addEventListener("close", () => { $("staging-actions").hidden = !may("rules", current); });
  }
  $("rule-form").addEventListener("submit", submitRule);
  $("rule-cancel").addEventListener("click", () => $("rule-dialog").close());
  $("rule-code").addEventListener("change", () => setPattern($("rule-code").value === "pattern"));
  $("preview-close").addEventListener("click", () => $("preview-dialog").close());
  $("trace-form").addEventListener("submit", runTrace);
  $("errors-hour").addEventListener("click", () => showErrorsWindow("hour"));
  $("errors-day").addEventListener("click", () => showErrorsWindow("day"));
  $("lookup-form").addEventListener("submit", lookUpRequest);
  if (sessionStorage.getItem(TOKEN_KEY)) whoAmI().then(showDomains);
  else show("sign-in-view");
});
