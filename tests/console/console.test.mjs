// Browser tests of the console, in headless Chromium driven by Playwright. Started by
// tests/console.rs with a running edge and origin; every check is what an operator would see
// (by role and accessible name) or what a client of the edge would get.
//
// Environment: ADMIN_URL (the console), EDGE (host:port of the edge), DOMAIN, TOKEN,
// PAGE_A / PAGE_B (page URLs the origin serves) and TEXT_A / TEXT_B (their text),
// SCREENSHOTS (a folder for screenshots of failures), CHROMIUM (the browser). Which suite runs:
// AFTER_RESTART=1, SCOPED_TOKEN set, VERSIONS=1 (domain versions and staging), INSIGHT=1 (Test a
// URL, the Errors tab and Look up a request), else the main one.
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const ADMIN_URL = env("ADMIN_URL");
const EDGE = env("EDGE");
const DOMAIN = env("DOMAIN");
const TOKEN = env("TOKEN");
const [PAGE_A, PAGE_B, TEXT_A, TEXT_B] = ["PAGE_A", "PAGE_B", "TEXT_A", "TEXT_B"].map(env);
const SCREENSHOTS = env("SCREENSHOTS");

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/// A GET through the edge for DOMAIN, as curl would send it (with `extra` headers).
function edgeGet(pathname, accept, extra) {
  const [host, port] = EDGE.split(":");
  const headers = { Host: DOMAIN, ...(accept ? { Accept: accept } : {}), ...(extra || {}) };
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port: Number(port), path: pathname, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode, body, headers: res.headers }));
    });
    req.on("error", reject);
    req.end();
  });
}

/// Polls `check` until it returns true, for up to `ms`.
async function eventually(what, check, ms = 5000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last === true) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: never happened (last: ${JSON.stringify(last)})`);
}

async function apiRules() {
  const resp = await fetch(`${ADMIN_URL}/api/domains/${DOMAIN}/custom-pages`, {
    headers: { Authorization: `Bearer ${TOKEN}` },
  });
  return (await resp.json()).custom_pages;
}

/// A call of the admin API with TOKEN, as a script would make it.
function adminCall(method, pathname, body, headers) {
  return fetch(`${ADMIN_URL}${pathname}`, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json", ...(headers || {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function apiVersions() {
  const resp = await adminCall("GET", `/api/domains/${DOMAIN}/versions`);
  assert(resp.status === 200, `GET versions: ${resp.status}`);
  return resp.json();
}

async function signIn(page) {
  await page.goto(ADMIN_URL);
  await page.getByLabel("Token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Domain Names" }).waitFor();
}

async function manage(page) {
  const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: DOMAIN, exact: true }) });
  await row.getByRole("button", { name: "Manage" }).click();
  await page.getByRole("tab", { name: "Custom Pages" }).waitFor();
}

function ruleRow(page, code) {
  return page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: code, exact: true }) });
}

async function customize(page, code, url) {
  await page.getByRole("button", { name: "Customize" }).click();
  const dialog = page.getByRole("dialog", { name: "Customize Page" });
  await dialog.getByLabel("Status code").selectOption(code);
  await dialog.getByLabel("URL").fill(url);
  await dialog.getByRole("button", { name: "OK" }).click();
  return dialog;
}

const tests = {
  async "the Content-Security-Policy blocks injected scripts, styles and framing"(page) {
    const resp = await page.goto(ADMIN_URL);
    const csp = resp.headers()["content-security-policy"] || "";
    for (const directive of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]) {
      assert(csp.split(";").map((d) => d.trim()).includes(directive), `the console's CSP has ${directive}: ${csp}`);
    }
    // What an HTML injection would try: an inline script, an inline event handler, a script from
    // elsewhere. Each is refused by the browser and reported as a violation of its directive.
    page.expectedErrors = /Content Security Policy/;
    const outcome = await page.evaluate(async () => {
      const violated = [];
      document.addEventListener("securitypolicyviolation", (e) => violated.push(e.effectiveDirective));
      const inline = document.createElement("script");
      inline.textContent = "window.__injected = 'inline script ran'";
      document.body.appendChild(inline);
      const img = document.createElement("img");
      img.setAttribute("src", "data:image/gif;base64,R0lGODlhAQABAAAAACw=");
      img.setAttribute("onload", "window.__injected = 'event handler ran'");
      document.body.appendChild(img);
      const remote = document.createElement("script");
      remote.src = "http://127.0.0.1:9/evil.js";
      document.body.appendChild(remote);
      const style = document.createElement("style");
      style.textContent = "body { background: rgb(255, 0, 0) }";
      document.head.appendChild(style);
      await new Promise((r) => setTimeout(r, 500));
      return {
        ran: window.__injected || null,
        background: getComputedStyle(document.body).backgroundColor,
        violated,
      };
    });
    assert(outcome.ran === null, `an injected script ran: ${outcome.ran}`);
    assert(outcome.background !== "rgb(255, 0, 0)", "an injected inline style applied");
    for (const directive of ["script-src-elem", "script-src-attr", "style-src-elem"]) {
      assert(outcome.violated.includes(directive), `a ${directive} violation: ${JSON.stringify(outcome.violated)}`);
    }
    // Control: the console's own script still runs under the same policy.
    await page.getByLabel("Token").waitFor();
  },

  async "a wrong token is refused, the right one signs in, Sign out forgets it"(page) {
    await page.goto(ADMIN_URL);
    await page.getByLabel("Token").fill("not-the-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong token" }).waitFor();
    await signIn(page);
    assert((await page.evaluate(() => sessionStorage.length)) === 1, "the token is kept in sessionStorage");
    assert(!page.url().includes(TOKEN), "the token is never in a URL");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("Token").waitFor();
    assert((await page.evaluate(() => sessionStorage.length)) === 0, "Sign out forgets the token");
  },

  async "the domain table lists the domain, its servers and rules, and filters"(page) {
    await signIn(page);
    const row = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: DOMAIN, exact: true }) });
    await row.waitFor();
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-domains.png"), fullPage: true });
    const text = await row.innerText();
    assert(/127\.\d+\.\d+\.\d+:\d+ \(up\)/.test(text), `origin servers with their state: ${text}`);
    // The filter is asked of the edge (the table holds one page of its list).
    await page.getByLabel("Filter").fill("no-such-domain");
    await row.waitFor({ state: "detached" });
    await page.getByRole("status").filter({ hasText: "No domain matches the filter" }).waitFor();
    await page.getByLabel("Filter").fill(DOMAIN.slice(0, 3));
    await row.waitFor();
  },

  async "the domain table pages through the edge's list, and the filter narrows it there"(page) {
    // 55 more domains: with 50 rows a page, the list of 56 takes two pages.
    const names = Array.from({ length: 55 }, (_, i) => `p${String(i).padStart(2, "0")}.paged.example`);
    const call = (method, name, body) =>
      fetch(`${ADMIN_URL}/api/domains/${name}`, {
        method,
        headers: { Authorization: `Bearer ${TOKEN}`, "Content-Type": "application/json" },
        body: body && JSON.stringify(body),
      });
    const servers = { origin: { servers: ["127.0.0.1:9"] } };
    for (const name of names) assert((await call("PUT", name, servers)).status === 201, `PUT ${name}`);
    try {
      await signIn(page);
      const rows = page.locator("#domain-rows tr");
      const status = page.getByRole("status").filter({ hasText: "Domains" });
      await status.filter({ hasText: /^Domains 1–50$/ }).waitFor();
      assert((await rows.count()) === 50, `50 rows on the first page, not ${await rows.count()}`);
      assert(await page.getByRole("button", { name: "Previous page" }).isDisabled(), "no page before the first");
      await page.getByRole("button", { name: "Next page" }).click();
      await status.filter({ hasText: /^Domains 51–56$/ }).waitFor();
      assert((await rows.count()) === 6, "the last six on the second page");
      await page.getByRole("rowheader", { name: "p54.paged.example", exact: true }).waitFor();
      assert(await page.getByRole("button", { name: "Next page" }).isDisabled(), "no page after the last");
      await page.getByRole("button", { name: "Previous page" }).click();
      await page.getByRole("rowheader", { name: DOMAIN, exact: true }).waitFor();
      // The filter goes to the edge: five names match, across what were two pages.
      await page.getByLabel("Filter").fill("P5");
      await status.filter({ hasText: /^Domains 1–5$/ }).waitFor();
      const shown = await page.locator("#domain-rows th").allInnerTexts();
      assert(JSON.stringify(shown) === JSON.stringify(names.slice(50)), `filtered rows: ${shown}`);
    } finally {
      for (const name of names) await call("DELETE", name);
    }
  },

  async "Customize, Modify, Refresh, Preview and Delete a 404 rule, seen through the edge"(page) {
    await signIn(page);
    await manage(page);
    const dialog = await customize(page, "404", PAGE_A);
    await dialog.waitFor({ state: "hidden" });
    await eventually("the custom 404 page through the edge", async () => {
      const got = await edgeGet("/no-such-page");
      return got.status === 404 && got.body.includes(TEXT_A) ? true : got;
    });
    // Modify it to another page.
    await ruleRow(page, "404").getByRole("button", { name: "Modify" }).click();
    const modify = page.getByRole("dialog", { name: "Customize Page" });
    assert((await modify.getByLabel("URL").inputValue()) === PAGE_A, "Modify opens the dialog filled in");
    await modify.getByLabel("URL").fill(PAGE_B);
    await modify.getByRole("button", { name: "OK" }).click();
    await modify.waitFor({ state: "hidden" });
    await eventually("the modified page through the edge", async () => {
      const got = await edgeGet("/no-such-page");
      return got.status === 404 && got.body.includes(TEXT_B) ? true : got;
    });
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-custom-pages.png"), fullPage: true });
    // Refresh: the fetched-at time moves.
    const fetchedAt = () => ruleRow(page, "404").locator(".fetched-at").innerText();
    const before = await fetchedAt();
    await new Promise((r) => setTimeout(r, 1100));
    await ruleRow(page, "404").getByRole("button", { name: "Refresh" }).click();
    await eventually("a new fetched-at time", async () => ((await fetchedAt()) !== before ? true : await fetchedAt()));
    // Preview: the stored copy, in a sandboxed frame.
    await ruleRow(page, "404").getByRole("button", { name: "Preview" }).click();
    const frame = page.frameLocator("#preview-frame");
    await frame.locator("body").filter({ hasText: TEXT_B }).waitFor();
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-preview.png") });
    assert((await page.locator("#preview-frame").getAttribute("sandbox")) === "", "the preview frame is sandboxed");
    await page.getByRole("button", { name: "Close" }).click();
    // Delete, confirmed: the built-in page again.
    page.once("dialog", (d) => d.accept());
    await ruleRow(page, "404").getByRole("button", { name: "Delete" }).click();
    await ruleRow(page, "404").waitFor({ state: "detached" });
    await eventually("the default page through the edge", async () => {
      const got = await edgeGet("/no-such-page");
      return got.status === 404 && !got.body.includes(TEXT_B) && !got.body.includes(TEXT_A) ? true : got;
    });
  },

  async "an invalid URL shows its field error and changes nothing"(page) {
    await signIn(page);
    await manage(page);
    const rulesBefore = JSON.stringify(await apiRules());
    const dialog = await customize(page, "403", "not a url");
    const error = dialog.locator("#rule-url-error");
    await error.filter({ hasText: /./ }).waitFor();
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-dialog-error.png") });
    assert(await dialog.isVisible(), "the dialog stays open");
    await dialog.getByRole("button", { name: "Cancel" }).click();
    assert(JSON.stringify(await apiRules()) === rulesBefore, "nothing changed");
  },

  async "a rule is created with the keyboard only"(page) {
    await signIn(page);
    await manage(page);
    await page.getByRole("button", { name: "Customize" }).focus();
    await page.keyboard.press("Enter");
    const dialog = page.getByRole("dialog", { name: "Customize Page" });
    await dialog.waitFor();
    // Focus starts on Status code.
    await page.keyboard.press("End"); // the last option: a pattern
    await page.keyboard.press("Tab");
    await page.keyboard.type("5xx");
    await page.keyboard.press("Tab");
    await page.keyboard.type(PAGE_A);
    await page.keyboard.press("Enter");
    await dialog.waitFor({ state: "hidden" });
    await ruleRow(page, "5xx").waitFor();
    const rules = await apiRules();
    assert(rules.some((r) => r.code === "5xx" && r.url === PAGE_A), `the rule exists: ${JSON.stringify(rules)}`);
  },

  async "a rule with a JSON variant in two languages, not inlined, then a bad media type at its field"(page) {
    await signIn(page);
    await manage(page);
    await page.getByRole("button", { name: "Customize" }).click();
    const dialog = page.getByRole("dialog", { name: "Customize Page" });
    await dialog.getByLabel("Status code").selectOption("405");
    await dialog.getByLabel("URL").fill(PAGE_A);
    const json = PAGE_A.replace(".html", ".json");
    const frenchJson = PAGE_A.replace(".html", ".fr.json");
    await dialog.getByLabel("Variants").fill(`application/json ${json}\napplication/json fr ${frenchJson}`);
    await dialog.getByLabel("Default page language").fill("en");
    await dialog.getByLabel("Inline stylesheets and images").uncheck();
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.waitFor({ state: "hidden" });
    const rules = await apiRules();
    const rule = rules.find((r) => r.code === 405);
    const variant = rule && rule.variants && rule.variants["application/json"];
    assert(variant && variant.url === json && variant.languages.fr === frenchJson, JSON.stringify(rules));
    assert(rule.language === "en" && rule.inline === false, JSON.stringify(rules));
    // Modify keeps the variant, its translation and the inline choice, shown in the dialog.
    await ruleRow(page, "405").getByRole("button", { name: "Modify" }).click();
    const shown = await dialog.getByLabel("Variants").inputValue();
    assert(shown === `application/json ${json}\napplication/json fr ${frenchJson}`, `variants shown: ${shown}`);
    assert(!(await dialog.getByLabel("Inline stylesheets and images").isChecked()), "inline: false shown");
    await dialog.getByLabel("Variants").fill("Application/JSON!! http://x");
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.locator("#rule-variants-error").filter({ hasText: /./ }).waitFor();
    await dialog.getByRole("button", { name: "Cancel" }).click();
    assert(JSON.stringify(await apiRules()) === JSON.stringify(rules), "nothing changed");
  },

  async "markup in names and errors is shown as text"(page) {
    await signIn(page);
    await page.getByLabel("Domain name").fill("<script>window.pwned=1</script>.example.com");
    await page.getByLabel("Origin servers").fill("127.0.0.1:1");
    await page.getByRole("button", { name: "Add domain" }).click();
    const error = page.locator("#add-domain-error");
    await error.filter({ hasText: "<script>" }).waitFor();
    await manage(page);
    const dialog = await customize(page, "404", `http://${DOMAIN}/<script>window.pwned=1</script>`);
    await dialog.locator(".error").filter({ hasText: /./ }).first().waitFor();
    await dialog.getByRole("button", { name: "Cancel" }).click();
    assert((await page.evaluate(() => window.pwned)) === undefined, "no injected script ran");
    assert((await page.locator("script").count()) === 1, "no script element was added");
  },

  async "a 404 rule only for /shop/* is made in the dialog, listed with its condition and served only there"(page) {
    // The domain's default 404 (PAGE_B), through the API; the console adds one for /shop/* beside it.
    const put = await adminCall("PUT", `/api/domains/${DOMAIN}/custom-pages/404`, { url: PAGE_B });
    assert(put.ok, `PUT the default 404 rule: ${put.status}`);
    await signIn(page);
    await manage(page);
    await page.getByRole("button", { name: "Customize" }).click();
    const dialog = page.getByRole("dialog", { name: "Customize Page" });
    await dialog.getByLabel("Status code").selectOption("404");
    await dialog.getByLabel("URL").fill(PAGE_A);
    const only = dialog.getByRole("group", { name: "Only for" });
    await only.getByLabel("Paths").fill("/shop/*");
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.waitFor({ state: "hidden" });
    // Two 404 rows: the new one says its condition in the "Only for" column, the default none.
    const cellOf = (text) => page.getByRole("cell", { name: text, exact: true });
    const shop = ruleRow(page, "404").filter({ has: cellOf("paths /shop/*") });
    await shop.waitFor();
    const columns = await tabPanel(page, "Custom Pages").getByRole("columnheader").allInnerTexts();
    const at = columns.map((c) => c.trim()).indexOf("Only for");
    assert(at > 0, `an "Only for" column: ${columns}`);
    const shopCells = await shop.locator("th, td").allInnerTexts();
    assert(shopCells[at].trim() === "paths /shop/*" && shopCells.includes(PAGE_A), `the conditional rule's row: ${shopCells}`);
    const fallback = ruleRow(page, "404").filter({ has: cellOf(PAGE_B) });
    const fallbackCells = await fallback.locator("th, td").allInnerTexts();
    assert(fallbackCells[at].trim() === "", `the default rule has no condition: ${fallbackCells}`);
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-only-for.png"), fullPage: true });
    let rules = (await apiRules()).filter((r) => r.code === 404);
    assert(rules.length === 2, `two 404 rules: ${JSON.stringify(rules)}`);
    assert(rules.some((r) => r.url === PAGE_B && r.when === undefined), `the default rule unchanged: ${JSON.stringify(rules)}`);
    assert(rules.some((r) => r.url === PAGE_A && JSON.stringify(r.when) === JSON.stringify({ paths: ["/shop/*"] })),
      `the rule for /shop/*: ${JSON.stringify(rules)}`);
    // Through the edge: /shop/x (a 404 at the origin) gets the shop page, /blog/x the default.
    await eventually("the shop page for /shop/x", async () => {
      const got = await edgeGet("/shop/x");
      return got.status === 404 && got.body.includes(TEXT_A) ? true : got;
    }, 10000);
    const blog = await edgeGet("/blog/x");
    assert(blog.status === 404 && blog.body.includes(TEXT_B) && !blog.body.includes(TEXT_A), `/blog/x: ${blog.status} ${blog.body}`);
    const deeper = await edgeGet("/shop/x/y");
    assert(deeper.status === 404 && deeper.body.includes(TEXT_B), `* stays within a segment: ${deeper.status} ${deeper.body}`);
    // Modify opens the dialog with its condition; a new condition replaces the old rule.
    await shop.getByRole("button", { name: "Modify" }).click();
    assert((await only.getByLabel("Paths").inputValue()) === "/shop/*", "Modify shows the paths");
    assert((await only.getByLabel("Methods").inputValue()) === "", "no methods");
    assert((await only.getByLabel("Headers").inputValue()) === "", "no headers");
    assert(!(await only.getByLabel("Skip (no custom page)").isChecked()), "not a skip rule");
    await only.getByLabel("Paths").fill("/shop/**");
    await only.getByLabel("Methods").fill("get, HEAD");
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.waitFor({ state: "hidden" });
    const shopAll = ruleRow(page, "404").filter({ has: cellOf("paths /shop/**; methods GET, HEAD") });
    await shopAll.waitFor();
    await shop.waitFor({ state: "detached" });
    rules = (await apiRules()).filter((r) => r.code === 404);
    assert(rules.length === 2, `still two 404 rules: ${JSON.stringify(rules)}`);
    // Compared part by part: the API's JSON objects list their keys in name order.
    const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
    assert(rules.some((r) => r.url === PAGE_A && r.when && same(r.when.paths, ["/shop/**"]) && same(r.when.methods, ["GET", "HEAD"])
      && Object.keys(r.when).length === 2),
      `the modified rule: ${JSON.stringify(rules)}`);
    await eventually("the shop page for /shop/x/y", async () => {
      const got = await edgeGet("/shop/x/y");
      return got.status === 404 && got.body.includes(TEXT_A) ? true : got;
    }, 10000);
    // Delete removes that rule only: /shop/x gets the default page again.
    page.once("dialog", (d) => d.accept());
    await shopAll.getByRole("button", { name: "Delete" }).click();
    await shopAll.waitFor({ state: "detached" });
    await fallback.waitFor();
    rules = (await apiRules()).filter((r) => r.code === 404);
    assert(rules.length === 1 && rules[0].url === PAGE_B && rules[0].when === undefined, `only the default rule is left: ${JSON.stringify(rules)}`);
    await eventually("the default page for /shop/x", async () => {
      const got = await edgeGet("/shop/x");
      return got.status === 404 && got.body.includes(TEXT_B) ? true : got;
    }, 10000);
    const removed = await adminCall("DELETE", `/api/domains/${DOMAIN}/custom-pages/404`);
    assert(removed.ok, `DELETE the default 404 rule: ${removed.status}`);
  },
};

// Run by tests/console.rs after restarting the edge with its origin down (AFTER_RESTART=1):
// rule 502 serves PAGE_A, fetched before the restart and read back from the state folder.
const afterRestart = {
  async "a page kept from before a restart shows as stale and is served"(page) {
    await signIn(page);
    await manage(page);
    const row = ruleRow(page, "502");
    await row.getByText("stale", { exact: true }).waitFor();
    await row.getByText("kept from before the restart").waitFor();
    const got = await edgeGet("/anything");
    assert(got.status === 502 && got.body.includes(TEXT_A), `the kept page is served: ${got.status} ${got.body}`);
  },
};
// Run by tests/console.rs with SCOPED_TOKEN (rules on DOMAIN only) and OTHER (a domain it may
// not touch).
const scoped = {
  async "a scoped token sees only its domains and only the actions it may take"(page) {
    await page.goto(ADMIN_URL);
    await page.getByLabel("Token").fill(env("SCOPED_TOKEN"));
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Domain Names" }).waitFor();
    await page.getByText("Signed in as shop").waitFor();
    const mine = page.getByRole("row").filter({ has: page.getByRole("rowheader", { name: DOMAIN, exact: true }) });
    await mine.waitFor();
    assert((await page.getByRole("rowheader", { name: env("OTHER"), exact: true }).count()) === 0, "the other domain is not listed");
    assert((await mine.getByRole("button", { name: "Delete" }).count()) === 0, "no Delete without the domains permission");
    assert(!(await page.getByRole("button", { name: "Add domain" }).isVisible()), "no Add domain without the domains permission");
    await mine.getByRole("button", { name: "Manage" }).click();
    await page.getByRole("button", { name: "Customize" }).waitFor();
    const rule = ruleRow(page, "404");
    await rule.getByRole("button", { name: "Modify" }).waitFor();
    await rule.getByRole("button", { name: "Delete" }).waitFor();
    assert((await rule.getByRole("button", { name: "Refresh" }).count()) === 0, "no Refresh without the cache permission");
  },
};

// Run by tests/console.rs with VERSIONS=1, on a domain without rules, in this order (each
// builds on the versions the ones before made).
function tabPanel(page, name) {
  return page.getByRole("tabpanel", { name });
}

function versionRow(page, n) {
  return tabPanel(page, "Versions").getByRole("row").filter({ has: page.getByRole("rowheader", { name: String(n), exact: true }) });
}

/// The texts of a version row's cells: When, By, Comment, Actions.
async function versionCells(row) {
  return row.getByRole("cell").allInnerTexts();
}

function topVersionRow(page) {
  return tabPanel(page, "Versions").locator("tbody tr").first();
}

async function servedNotFound(what, text, extra) {
  await eventually(what, async () => {
    const got = await edgeGet("/no-such-page", undefined, extra);
    return got.status === 404 && got.body.includes(text) ? true : got;
  }, 10000);
}

const versions = {
  async "Versions lists each change with who made it and why, shows a diff and rolls back"(page) {
    await signIn(page);
    await manage(page);
    const dialog = await customize(page, "404", PAGE_A);
    await dialog.waitFor({ state: "hidden" });
    await ruleRow(page, "404").waitFor();
    // A second change, through the API with a comment.
    const put = await adminCall("PUT", `/api/domains/${DOMAIN}/custom-pages/404`, { url: PAGE_B }, { "X-Change-Comment": "page B instead" });
    assert(put.ok, `PUT the rule: ${put.status}`);
    const changed = (await apiVersions()).current;
    await page.getByRole("tab", { name: "Versions" }).click();
    assert((await page.getByRole("tab", { name: "Versions" }).getAttribute("aria-selected")) === "true", "the Versions tab is selected");
    // Newest first: the API's change, then the console's, both by the default token.
    await topVersionRow(page).getByRole("rowheader", { name: String(changed), exact: true }).waitFor();
    const top = await versionCells(topVersionRow(page));
    assert(top[1] === "default" && top[2] === "page B instead", `the newest version: ${top}`);
    const byConsole = await versionCells(versionRow(page, changed - 1));
    assert(byConsole[1] === "default", `the console's change: ${byConsole}`);
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-versions.png"), fullPage: true });
    // View: the YAML of the console's version.
    await versionRow(page, changed - 1).getByRole("button", { name: "View" }).click();
    const yaml = page.getByRole("region", { name: `Version ${changed - 1}` });
    await yaml.waitFor();
    const text = await yaml.innerText();
    assert(text.includes("custom_pages") && text.includes(PAGE_A) && !text.includes(PAGE_B), `version ${changed - 1}: ${text}`);
    // Diff: the URL's line, out and in.
    const panel = tabPanel(page, "Versions");
    await panel.getByLabel("From version").selectOption(String(changed - 1));
    await panel.getByLabel("To version").selectOption(String(changed));
    await panel.getByRole("button", { name: "Show diff" }).click();
    const diff = page.getByRole("region", { name: "Diff" });
    await diff.filter({ hasText: PAGE_B }).waitFor();
    const lines = (await diff.innerText()).split("\n");
    assert(lines.some((l) => l.startsWith("-") && !l.startsWith("---") && l.includes(`url: ${PAGE_A}`)), `the old URL's line: ${lines.join("\n")}`);
    assert(lines.some((l) => l.startsWith("+") && !l.startsWith("+++") && l.includes(`url: ${PAGE_B}`)), `the new URL's line: ${lines.join("\n")}`);
    assert(lines.some((l) => l.startsWith("@@")), `a hunk header: ${lines.join("\n")}`);
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-diff.png"), fullPage: true });
    // Roll back to the console's version, confirmed with a comment.
    await versionRow(page, changed - 1).getByRole("button", { name: "Rollback" }).click();
    const confirm = page.getByRole("dialog", { name: `Roll back to version ${changed - 1}` });
    await confirm.getByLabel("Comment").fill("page B was wrong");
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-rollback.png") });
    await confirm.getByRole("button", { name: "Roll back" }).click();
    await confirm.waitFor({ state: "hidden" });
    await topVersionRow(page).getByRole("rowheader", { name: String(changed + 1), exact: true }).waitFor();
    const rolled = await versionCells(topVersionRow(page));
    assert(rolled[1] === "default" && rolled[2] === "page B was wrong", `the rollback's version: ${rolled}`);
    assert((await apiVersions()).current === changed + 1, "the rollback made one version");
    await page.getByRole("tab", { name: "Custom Pages" }).click();
    await ruleRow(page, "404").getByRole("cell", { name: PAGE_A, exact: true }).waitFor();
    await servedNotFound("the old page through the edge after the rollback", TEXT_A);
  },

  async "a rollback from a list another change made stale is refused, said, and the list shown again"(page) {
    await signIn(page);
    await manage(page);
    await page.getByRole("tab", { name: "Versions" }).click();
    const shown = (await apiVersions()).current;
    await topVersionRow(page).getByRole("rowheader", { name: String(shown), exact: true }).waitFor();
    // Someone else changes the domain after the list was shown.
    const put = await adminCall("PUT", `/api/domains/${DOMAIN}/custom-pages/404`, { url: PAGE_B }, { "X-Change-Comment": "meanwhile" });
    assert(put.ok, `PUT the rule: ${put.status}`);
    const now = (await apiVersions()).current;
    assert(now === shown + 1, `one more version: ${now}`);
    await versionRow(page, shown - 1).getByRole("button", { name: "Rollback" }).click();
    const confirm = page.getByRole("dialog", { name: `Roll back to version ${shown - 1}` });
    await confirm.getByRole("button", { name: "Roll back" }).click();
    await confirm.waitFor({ state: "hidden" });
    await tabPanel(page, "Versions").getByRole("alert").filter({ hasText: /./ }).waitFor();
    await topVersionRow(page).getByRole("rowheader", { name: String(now), exact: true }).waitFor();
    const top = await versionCells(topVersionRow(page));
    assert(top[2] === "meanwhile", `the other change is listed: ${top}`);
    assert((await apiVersions()).current === now, "nothing changed");
    assert((await apiRules()).find((r) => r.code === 404).url === PAGE_B, "the rule is the other change's");
  },

  async "a rule customized in staging is served only with the staging header, then published"(page) {
    const put = await adminCall("PUT", `/api/domains/${DOMAIN}/custom-pages/404`, { url: PAGE_A });
    assert(put.ok, `PUT the rule: ${put.status}`);
    await servedNotFound("production's page", TEXT_A);
    await signIn(page);
    await manage(page);
    await page.getByRole("tab", { name: "Staging" }).click();
    const panel = tabPanel(page, "Staging");
    await panel.getByText("no staging").waitFor();
    await panel.getByRole("button", { name: "Customize staging rule" }).click();
    const dialog = page.getByRole("dialog", { name: "Customize Page" });
    await dialog.getByLabel("Status code").selectOption("404");
    await dialog.getByLabel("URL").fill(PAGE_B);
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.waitFor({ state: "hidden" });
    const staged = panel.getByRole("row").filter({ has: page.getByRole("rowheader", { name: "404", exact: true }) });
    await staged.getByRole("cell", { name: PAGE_B, exact: true }).waitFor();
    const resp = await adminCall("GET", `/api/domains/${DOMAIN}/staging`);
    assert(resp.status === 200, `GET staging: ${resp.status}`);
    const { key } = await resp.json();
    assert(/^[0-9a-f]{32}$/i.test(key), `the staging key: ${key}`);
    await panel.getByText(key, { exact: true }).waitFor();
    const preview = await panel.getByRole("figure", { name: "Preview" }).locator("code").innerText();
    assert(preview.includes(`X-Custom-Pages-Staging: ${key}`) && preview.includes(DOMAIN), `the preview line: ${preview}`);
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-staging.png"), fullPage: true });
    // Production is unchanged; the edge serves staging only with the right key.
    assert((await apiRules()).find((r) => r.code === 404).url === PAGE_A, "production keeps its rule");
    await servedNotFound("the staging page with the key", TEXT_B, { "X-Custom-Pages-Staging": key });
    const plain = await edgeGet("/no-such-page");
    assert(plain.status === 404 && plain.body.includes(TEXT_A), `production without the header: ${plain.status} ${plain.body}`);
    const wrong = await edgeGet("/no-such-page", undefined, { "X-Custom-Pages-Staging": "0".repeat(32) });
    assert(wrong.status === 404 && wrong.body.includes(TEXT_A), `production with a wrong key: ${wrong.status} ${wrong.body}`);
    // Publish, confirmed with a comment.
    const before = (await apiVersions()).current;
    await panel.getByRole("button", { name: "Publish" }).click();
    const confirm = page.getByRole("dialog", { name: "Publish staging" });
    await confirm.getByLabel("Comment").fill("page B, tried in staging");
    await confirm.getByRole("button", { name: "Publish" }).click();
    await confirm.waitFor({ state: "hidden" });
    await panel.getByText("no staging").waitFor();
    await page.getByRole("tab", { name: "Custom Pages" }).click();
    await ruleRow(page, "404").getByRole("cell", { name: PAGE_B, exact: true }).waitFor();
    await page.getByRole("tab", { name: "Versions" }).click();
    await topVersionRow(page).getByRole("rowheader", { name: String(before + 1), exact: true }).waitFor();
    const top = await versionCells(topVersionRow(page));
    assert(top[1] === "default" && top[2] === "page B, tried in staging", `the published version: ${top}`);
    await servedNotFound("the published page without the header", TEXT_B);
  },

  async "a staged rule is modified, then discarded, and production does not change"(page) {
    const pairs = (list) => JSON.stringify(list.map((r) => [r.code, r.url]));
    const production = pairs(await apiRules());
    const versionBefore = (await apiVersions()).current;
    await signIn(page);
    await manage(page);
    // The tabs with the keyboard: Right twice from Custom Pages is Staging.
    await page.getByRole("tab", { name: "Custom Pages" }).focus();
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("ArrowRight");
    assert((await page.getByRole("tab", { name: "Staging" }).getAttribute("aria-selected")) === "true", "Staging is selected");
    const panel = tabPanel(page, "Staging");
    await panel.getByText("no staging").waitFor();
    await panel.getByRole("button", { name: "Customize staging rule" }).click();
    const dialog = page.getByRole("dialog", { name: "Customize Page" });
    await dialog.getByLabel("Status code").selectOption("403");
    await dialog.getByLabel("URL").fill(PAGE_A);
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.waitFor({ state: "hidden" });
    const staged = panel.getByRole("row").filter({ has: page.getByRole("rowheader", { name: "403", exact: true }) });
    await staged.getByRole("button", { name: "Modify" }).click();
    assert((await dialog.getByLabel("URL").inputValue()) === PAGE_A, "Modify opens the dialog filled in");
    await dialog.getByLabel("URL").fill(PAGE_B);
    await dialog.getByRole("button", { name: "OK" }).click();
    await dialog.waitFor({ state: "hidden" });
    await staged.getByRole("cell", { name: PAGE_B, exact: true }).waitFor();
    assert(pairs(await apiRules()) === production, "production's rules do not change");
    // Discard, confirmed.
    await panel.getByRole("button", { name: "Discard" }).click();
    const confirm = page.getByRole("dialog", { name: "Discard staging" });
    await confirm.getByRole("button", { name: "Discard" }).click();
    await confirm.waitFor({ state: "hidden" });
    await panel.getByText("no staging").waitFor();
    assert((await staged.count()) === 0, "no staging rule is shown");
    const resp = await adminCall("GET", `/api/domains/${DOMAIN}/staging`);
    assert(resp.status === 404, `no staging any more: ${resp.status}`);
    assert(pairs(await apiRules()) === production, "production's rules do not change");
    assert((await apiVersions()).current === versionBefore, "no new version");
  },
};
// Run by tests/console.rs with INSIGHT=1: DOMAIN has a 404 rule serving PAGE_A and a 5xx rule
// serving PAGE_B; the origin answers 404 for every other path.
async function apiErrors() {
  const resp = await adminCall("GET", `/api/domains/${DOMAIN}/errors`);
  assert(resp.status === 200, `GET errors: ${resp.status}`);
  return resp.json();
}

/// The texts of the items of a steps list.
async function stepTexts(list) {
  return list.getByRole("listitem").allInnerTexts();
}

/// Scrolls the trace's preview into view (a frame out of view may not be painted).
async function showPreview(page) {
  await page.getByTitle("Page preview").scrollIntoViewIfNeeded();
}

const insight = {
  async "Test a URL traces a path, the Errors tab charts and ranks the failing paths, and Trace explains one"(page) {
    const missing = "/insight/missing";
    for (let i = 0; i < 3; i += 1) {
      const got = await edgeGet(missing);
      assert(got.status === 404 && got.body.includes(TEXT_A), `a custom 404 through the edge: ${got.status} ${got.body}`);
    }
    // Errors are counted once the response has gone out.
    await eventually("the three 404s counted", async () => {
      const top = (await apiErrors()).hour.top;
      const row = top.find((t) => t.path === missing);
      return row && row.count === 3 ? true : top;
    });
    await signIn(page);
    await manage(page);
    // A real trace of a path the origin does not have: the 404 rule and its page.
    const form = page.getByRole("form", { name: "Test a URL" });
    const traced = "/insight/never-there";
    await form.getByLabel("URL").fill(traced);
    await form.getByRole("button", { name: "Trace" }).click();
    const steps = page.getByRole("list", { name: "Trace steps" });
    await steps.getByRole("listitem").filter({ hasText: /^rule: 404/ }).waitFor();
    await page.getByRole("status").filter({ hasText: `Status 404 for ${traced}` }).waitFor();
    let texts = await stepTexts(steps);
    assert(texts[0].startsWith("route: ") && texts[texts.length - 1].startsWith("response: 404"), `the steps: ${texts.join(" | ")}`);
    assert(texts.some((t) => t.startsWith("page: ") && t.includes(PAGE_A)), `the page step names the page: ${texts.join(" | ")}`);
    const preview = page.getByTitle("Page preview");
    assert((await preview.getAttribute("sandbox")) === "", "the preview frame is sandboxed");
    await showPreview(page);
    await page.frameLocator("#trace-preview").locator("body").filter({ hasText: TEXT_A }).waitFor();
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-trace.png"), fullPage: true });
    // A simulated origin answer: the 5xx rule and its page.
    await form.getByLabel("URL").fill("/insight/down");
    await form.getByLabel("Origin status").fill("503");
    await form.getByRole("button", { name: "Trace" }).click();
    await steps.getByRole("listitem").filter({ hasText: /^rule: 5xx/ }).waitFor();
    texts = await stepTexts(steps);
    assert(texts.some((t) => t.startsWith("origin: 503") && t.includes("simulated")), `a simulated origin step: ${texts.join(" | ")}`);
    assert(texts[texts.length - 1].startsWith("response: 503"), `the response step: ${texts.join(" | ")}`);
    await showPreview(page);
    await page.frameLocator("#trace-preview").locator("body").filter({ hasText: TEXT_B }).waitFor();
    // The Errors tab: the chart, and the path with its count; traces are not counted.
    await page.getByRole("tab", { name: "Errors" }).click();
    assert((await page.getByRole("tab", { name: "Errors" }).getAttribute("aria-selected")) === "true", "the Errors tab is selected");
    const panel = tabPanel(page, "Errors");
    await panel.getByRole("img", { name: "Errors over time", exact: true }).waitFor();
    const rowOf = (p) => panel.getByRole("row").filter({ has: page.getByRole("rowheader", { name: p, exact: true }) });
    await rowOf(missing).waitFor();
    const columns = (await panel.getByRole("columnheader").allInnerTexts()).map((c) => c.trim());
    assert(JSON.stringify(columns) === JSON.stringify(["Path", "Errors", "Statuses", "Custom page", "Actions"]), `the columns: ${columns}`);
    const cells = (await rowOf(missing).locator("th, td").allInnerTexts()).map((c) => c.trim());
    assert(cells[1] === "3" && cells[2].includes("404") && cells[3] === "3", `the row of ${missing}: ${cells}`);
    assert((await rowOf(traced).count()) === 0, "a traced path is not counted as an error");
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-errors.png"), fullPage: true });
    // The last 24 hours hold them too.
    await panel.getByRole("button", { name: "Last 24 hours" }).click();
    await panel.getByRole("button", { name: "Last 24 hours", pressed: true }).waitFor();
    assert((await panel.getByRole("button", { name: "Last hour" }).getAttribute("aria-pressed")) === "false", "Last hour is not pressed");
    await panel.getByRole("img", { name: "Errors over time", exact: true }).waitFor();
    await rowOf(missing).getByRole("cell", { name: "3", exact: true }).first().waitFor();
    // Trace: the path in the Test a URL box, traced for real (the origin status cleared).
    await rowOf(missing).getByRole("button", { name: "Trace" }).click();
    await page.getByRole("status").filter({ hasText: `Status 404 for ${missing}` }).waitFor();
    assert((await form.getByLabel("URL").inputValue()) === missing, "the path is in the URL box");
    assert((await form.getByLabel("Origin status").inputValue()) === "", "the origin status is cleared");
    await steps.getByRole("listitem").filter({ hasText: /^rule: 404/ }).waitFor();
    texts = await stepTexts(steps);
    assert(texts.some((t) => t.startsWith("origin: 404") && !t.includes("simulated")), `the origin's real answer: ${texts.join(" | ")}`);
    await showPreview(page);
    await page.frameLocator("#trace-preview").locator("body").filter({ hasText: TEXT_A }).waitFor();
  },

  async "Look up a request shows a real 404's steps by its X-Request-Id, and says when an id is not found"(page) {
    const got = await edgeGet("/insight/looked-up");
    assert(got.status === 404 && got.body.includes(TEXT_A), `a custom 404 through the edge: ${got.status} ${got.body}`);
    const id = got.headers["x-request-id"];
    assert(id, `an X-Request-Id: ${JSON.stringify(got.headers)}`);
    // Recorded once the response has gone out.
    await eventually("the request held", async () => {
      const resp = await adminCall("GET", `/api/requests/${encodeURIComponent(id)}`);
      return resp.status === 200 ? true : resp.status;
    });
    await signIn(page);
    const form = page.getByRole("form", { name: "Look up a request" });
    await form.getByLabel("Request ID").fill(id);
    await form.getByRole("button", { name: "Look up" }).click();
    const steps = page.getByRole("list", { name: "Request steps" });
    await steps.getByRole("listitem").filter({ hasText: /^rule: 404/ }).waitFor();
    const texts = await stepTexts(steps);
    assert(texts[0].startsWith("route: ") && texts[texts.length - 1].startsWith("response: 404"), `the steps: ${texts.join(" | ")}`);
    assert(texts.some((t) => t.startsWith("page: ") && t.includes(PAGE_A)), `the page step: ${texts.join(" | ")}`);
    await page.getByText("/insight/looked-up", { exact: false }).first().waitFor();
    await page.screenshot({ path: path.join(SCREENSHOTS, "view-lookup.png"), fullPage: true });
    // An id the edge never saw.
    await form.getByLabel("Request ID").fill("never-seen-request-0000");
    await form.getByRole("button", { name: "Look up" }).click();
    await page.getByRole("status").filter({ hasText: "not found" }).waitFor();
    await steps.waitFor({ state: "hidden" });
  },
};
const chosen = process.env.AFTER_RESTART === "1" ? afterRestart
  : process.env.SCOPED_TOKEN ? scoped
  : process.env.VERSIONS === "1" ? versions
  : process.env.INSIGHT === "1" ? insight
  : tests;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
let failed = 0;
fs.mkdirSync(SCREENSHOTS, { recursive: true });
for (const [name, test] of Object.entries(chosen)) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  const violations = [];
  // Errors in the page (a CSP violation, a script error); refused API calls are expected.
  page.on("console", (msg) => {
    if (msg.type() !== "error" || msg.text().startsWith("Failed to load resource")) return;
    // A test that provokes errors on purpose (the CSP test) names the ones it expects.
    if (page.expectedErrors && page.expectedErrors.test(msg.text())) return;
    violations.push(msg.text());
  });
  page.on("pageerror", (e) => violations.push(String(e)));
  try {
    await test(page);
    assert(violations.length === 0, `console errors: ${violations.join("; ")}`);
    console.log(`ok: ${name}`);
  } catch (e) {
    failed += 1;
    const file = path.join(SCREENSHOTS, name.replace(/[^a-z0-9]+/gi, "-") + ".png");
    await page.screenshot({ path: file, fullPage: true }).catch(() => {});
    console.log(`FAILED: ${name}\n  ${e.stack || e}\n  screenshot: ${file}`);
  }
  await context.close();
}
await browser.close();
process.exit(failed ? 1 : 0);
