// Drives the mizuban board in headless Chromium (Debian's /usr/bin/chromium)
// with playwright-core. Run by tests/browser.rs, which owns the service and the
// simulated station; the two talk over stdout lines: this script prints READY
// once logged in, the Rust test then raises HH_LEVEL, and this script checks it
// appears without a reload, acknowledges it, switches language and checks that
// a viewer gets no acknowledge button. Screenshots go to OUT_DIR.
//
// usage: node board.mjs BASE_URL USER PASS VIEWER VIEWER_PASS OUT_DIR
import { fail, launch, login, say, watchCsp } from "./common.mjs";

const [base, user, pass, viewer, viewerPass, outDir] = process.argv.slice(2);

const browser = await launch();
try {
  const ctx = await browser.newContext({ viewport: { width: 1600, height: 900 }, locale: "ja-JP" });
  const page = await ctx.newPage();
  watchCsp(page);
  await login(page, base, user, pass);
  await page.waitForSelector("#main:not([hidden])", { timeout: 10000 });
  await page.locator("#summary:not(:empty)").waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${outDir}/board-empty.png` });
  say("READY");

  // The alarm arrives over the event stream: no reload.
  const row = page.locator("tr[data-id]", { hasText: "満水" });
  await row.waitFor({ timeout: 30000 });
  const t0 = Date.now();
  if (!(await row.locator(".state").textContent()).includes("未確認")) fail("new alarm is not shown unacknowledged");
  if (!(await row.getAttribute("class")).includes("unack")) fail("unacknowledged alarm does not stand out");
  await page.screenshot({ path: `${outDir}/board-hh-level.png` });
  say("SEEN");

  await row.locator("button[data-act=ack]").click();
  await page.locator("#act-dialog[open]").waitFor({ timeout: 5000 });
  if (!(await page.locator("#act-what").textContent()).includes("MP-0701")) fail("the dialog does not name the alarm");
  await page.fill("#act-text", "現地確認に向かいます");
  await page.screenshot({ path: `${outDir}/board-ack-dialog.png` });
  await page.click("#act-ok");
  // (Locator waits, not waitForFunction: the board's CSP forbids eval.)
  await page.locator("tr[data-id] .state", { hasText: "確認済" }).first().waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${outDir}/board-acked.png` });
  say("ACKED " + (Date.now() - t0));

  // The alarm's detail: value and limit at the time, and its journal.
  await page.locator("tr[data-id]", { hasText: "満水" }).locator("td").nth(3).click();
  await page.locator("#detail:not([hidden]) table.journal tr", { hasText: "sato" }).waitFor({ timeout: 10000 });
  // Who was told: the person on call, by webhook, delivered.
  const told = page.locator("#detail table.notified tr", { hasText: "alarm.raised" });
  await told.first().waitFor({ timeout: 10000 });
  const toldText = await told.first().textContent();
  if (!toldText.includes("tanaka") || !toldText.includes("webhook:ops") || !toldText.includes("✓")) fail("notified row: " + toldText);
  if (!(await page.locator("#oncall").textContent()).includes("duty tanaka")) fail("on-call not shown");
  await page.screenshot({ path: `${outDir}/board-detail.png` });
  await page.click("#detail-close");
  // The sound can be muted, and it stays muted.
  await page.click("#mute");
  if ((await page.getAttribute("#mute", "aria-pressed")) !== "true") fail("mute did not toggle");
  say("DETAIL");

  // Shelve another alarm: a reason is required, the duration is chosen.
  const other = page.locator("tr[data-id]", { hasNotText: "満水" }).first();
  const otherId = await other.getAttribute("data-id");
  await other.locator("button[data-act=shelve]").click();
  await page.selectOption("#act-minutes", "30");
  await page.click("#act-ok");
  if (!(await page.locator("#act-err").textContent())) fail("shelve without a reason was accepted");
  await page.fill("#act-text", "ポンプ交換作業中");
  await page.click("#act-ok");
  await page.locator(`tr[data-id="${otherId}"]`).waitFor({ state: "detached", timeout: 10000 });
  const shelved = await (await page.request.get(`${base}/api/v1/alarms/${otherId}`)).json();
  if (shelved.state !== "shelved") fail("shelved alarm is " + shelved.state);
  say("SHELVED " + otherId);

  await page.selectOption("#lang", "en");
  const th = await page.locator("#alarms-view th[data-t=prio]").textContent();
  if (th !== "Priority") fail("language switch: header is " + th);
  const state = await page.locator("tr[data-id] .state").first().textContent();
  if (!state.includes("ACK ACTIVE")) fail("language switch: state is " + state);
  await page.screenshot({ path: `${outDir}/board-en.png` });
  say("ENGLISH");

  // The site overview: every site with its status in words and shape, searchable.
  await page.click("#tabs button[data-tab=sites]");
  const tile = page.locator(".tile[data-site=MP-0701]");
  await tile.waitFor({ timeout: 10000 });
  const st = await tile.locator(".st").textContent();
  if (!st.includes("ALARM")) fail("site tile status is " + st);
  if (!(await tile.textContent()).includes("level")) fail("site tile has no live level");
  // Site detail: trends with alarm markers, and the latest raw message.
  await tile.click();
  const level = page.locator("#site-detail svg[data-point=level] path");
  await level.waitFor({ timeout: 10000 });
  if (((await level.getAttribute("d")) || "").split("L").length < 10) fail("level trend has too few points");
  if (await page.locator("#site-detail svg[data-point=level] .mark").count() < 1) fail("no alarm marker on the trend");
  if (!(await page.locator("#site-detail pre.raw").textContent()).includes("mps-")) fail("no latest raw message");
  await page.screenshot({ path: `${outDir}/board-site-detail.png` });
  // Zoom: drag across the last 3 % of the 24 h trend (the station's last
  // 43 minutes, where the simulated data is).
  const span0 = await page.locator("#trend-span").getAttribute("data-from");
  const box = await page.locator("#site-detail svg[data-point=level]").boundingBox();
  await page.mouse.move(box.x + box.width * 0.97, box.y + box.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.9999, box.y + box.height / 2, { steps: 5 });
  await page.mouse.up();
  await page.locator("#zoom-reset").waitFor({ timeout: 10000 });
  const zf = new Date(await page.locator("#trend-span").getAttribute("data-from"));
  const zt = new Date(await page.locator("#trend-span").getAttribute("data-to"));
  const hours = (zt - zf) / 3600e3;
  if (hours < 0.6 || hours > 0.8) fail(`zoomed span is ${hours} h, want about 0.72 h`);
  if (zf <= new Date(span0)) fail("zoom did not move the start");
  await page.locator("#site-detail svg[data-point=level] path").waitFor({ timeout: 10000 });
  await page.screenshot({ path: `${outDir}/board-site-zoomed.png` });
  await page.click("#zoom-reset");
  await page.locator("#zoom-reset").waitFor({ state: "detached", timeout: 10000 });
  await page.selectOption("#trend-range", "168");
  // (A few minutes of data are one hourly bucket: a sliver of the week,
  // drawn but too thin to count as visible, so attached is what is waited for.)
  await page.locator("#site-detail svg[data-point=level][data-resolution='1h'] path.line").waitFor({ state: "attached", timeout: 10000 });
  // A year from the hourly rollups: the request says so, and the trend has
  // its min–max band.
  const asked = [];
  const watch = (r) => { if (r.url().includes("/readings?")) asked.push(r.url()); };
  page.on("request", watch);
  await page.selectOption("#trend-range", "8760");
  // The week's view also reads hourly rollups: wait for the year's span.
  // (Polled from here: the board's CSP forbids the eval waitForFunction uses.)
  const spanDays = async () => {
    const sp = page.locator("#trend-span");
    return (new Date(await sp.getAttribute("data-to")) - new Date(await sp.getAttribute("data-from"))) / 86400e3;
  };
  for (let i = 0; i < 100 && (await spanDays()) < 300; i++) await page.waitForTimeout(100);
  await page.locator("#site-detail svg[data-point=level][data-resolution='1h'] path.band").waitFor({ state: "attached", timeout: 10000 });
  const yd = (await page.locator("#site-detail svg[data-point=level] path.line").getAttribute("d")) || "";
  if (!/^M[\d.]+,[\d.]+L/.test(yd)) fail(`the year's trend has no step: ${yd}`);
  page.off("request", watch);
  if (!asked.length || !asked.every((u) => u.includes("resolution=1h"))) fail(`a year's trend did not read the hourly rollups: ${asked}`);
  const yf = new Date(await page.locator("#trend-span").getAttribute("data-from"));
  const yt = new Date(await page.locator("#trend-span").getAttribute("data-to"));
  if (Math.round((yt - yf) / 86400e3) !== 365) fail(`the year's span is ${(yt - yf) / 86400e3} days`);
  await page.screenshot({ path: `${outDir}/board-site-year.png` });
  await page.click("#site-detail-close");
  await page.fill("#site-search", "no-such-site");
  if (await page.locator(".tile").count() !== 0) fail("search did not filter");
  await page.fill("#site-search", "");
  await page.screenshot({ path: `${outDir}/board-sites.png` });
  say("SITES");

  // The journal, filtered by site, with a CSV export of the same rows.
  await page.click("#tabs button[data-tab=journal]");
  await page.fill("#j-site", "MP-0701");
  await page.click("#jfilter button");
  const ackRow = page.locator("#jrows tr", { hasText: "sato" });
  await ackRow.first().waitFor({ timeout: 10000 });
  const href = await page.locator("#j-csv").getAttribute("href");
  if (!href.includes("format=csv") || !href.includes("site=MP-0701")) fail("CSV link is " + href);
  const csv = await page.request.get(base + href);
  if (!csv.headers()["content-type"].startsWith("text/csv")) fail("CSV content type " + csv.headers()["content-type"]);
  const text = await csv.text();
  if (!text.includes("sato") || !text.split("\n")[0].includes("condition")) fail("CSV body: " + text.slice(0, 200));
  // Priority filter: only critical rows, and the CSV link carries the filter.
  await page.selectOption("#j-prio", "critical");
  await page.click("#jfilter button");
  // (Wait for the filtered table to replace the unfiltered one first.)
  await page.locator("#jrows tr .prio:not(.critical)").first().waitFor({ state: "detached", timeout: 10000 })
    .catch(() => fail("priority filter let other priorities through"));
  await page.locator("#jrows tr .prio.critical").first().waitFor({ timeout: 10000 });
  if (!(await page.locator("#j-csv").getAttribute("href")).includes("priority=critical")) fail("CSV link lacks the priority filter");
  await page.screenshot({ path: `${outDir}/board-journal.png` });
  await page.click("#tabs button[data-tab=alarms]");
  say("JOURNAL");

  // A viewer sees the alarm but cannot acknowledge it.
  const vctx = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const vpage = await vctx.newPage();
  watchCsp(vpage);
  await login(vpage, base, viewer, viewerPass);
  await vpage.locator("tr[data-id]").first().waitFor({ timeout: 10000 });
  if (await vpage.locator("button[data-act]").count() !== 0) fail("a viewer is offered ack/shelve buttons");
  await vpage.screenshot({ path: `${outDir}/board-viewer-phone.png` });
  say("VIEWER");

  // The service goes away: the board says so.
  say("STOP_SERVICE");
  await page.waitForSelector("#banner.show", { timeout: 15000 });
  await page.screenshot({ path: `${outDir}/board-disconnected.png` });
  say("BANNER");
  await page.locator("#banner.show").waitFor({ state: "detached", timeout: 30000 });
  const api = await (await page.request.get(base + "/api/v1/alarms")).json();
  const shown = await page.locator("tr[data-id]").evaluateAll((rows) => rows.map((r) => r.dataset.id).sort());
  const want = api.map((a) => a.id).sort();
  if (JSON.stringify(shown) !== JSON.stringify(want)) fail(`after resync the board shows ${shown} but the API has ${want}`);
  await page.screenshot({ path: `${outDir}/board-reconnected.png` });
  say("RESYNCED");
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await browser.close();
}
