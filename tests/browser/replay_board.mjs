// An engineer on the board: the Analysis tab's KPIs, then a replay of a span
// with a candidate rules file, progress while it runs, and the report it
// links to. Prints one JSON line of what was seen.
import { launch, login, say, fail, watchCsp } from "./common.mjs";
import { readFileSync } from "node:fs";

const [base, user, pass, from, to, rulesPath, shot] = process.argv.slice(2);
const browser = await launch();
const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const page = await context.newPage();
watchCsp(page);
await login(page, base, user, pass);
await page.waitForSelector("#main:not([hidden])");
await page.click('#tabs button[data-tab="analysis"]');
await page.waitForSelector('#kpi-rows td[data-kpi="annunciations"]');
const annunciations = await page.textContent('#kpi-rows td[data-kpi="annunciations"]');
if (await page.isHidden("#replay-panel")) fail("an engineer sees the replay panel");
// datetime-local takes the browser's local time; the harness runs in UTC.
await page.fill("#rp-from", from.slice(0, 16));
await page.fill("#rp-to", to.slice(0, 16));
await page.setInputFiles("#rp-rules", { name: "candidate.toml", mimeType: "text/plain", buffer: readFileSync(rulesPath) });
await page.click("#rp-start");
try {
  await page.waitForSelector("#rp-report", { timeout: 60000 });
} catch (e) {
  fail("no report link; status: " + (await page.textContent("#rp-status")));
}
const status = await page.textContent("#rp-status");
const href = await page.getAttribute("#rp-report", "href");
await page.screenshot({ path: shot });
// The same browser context: the session cookie goes with it.
const report = await context.newPage();
report.on("pageerror", (e) => fail("report page error: " + e.message));
await report.goto(base + href);
const charts = await report.evaluate(() => ({
  alarms: document.querySelectorAll("svg.chart.alarms").length,
  trends: document.querySelectorAll("svg.chart.trend").length,
  kpiColumns: document.querySelectorAll("table.kpis tr:first-child th").length - 1,
  // The inline styles applied (the report's own policy allows them).
  styled: getComputedStyle(document.querySelector("table.kpis th")).backgroundColor,
}));
say(JSON.stringify({ annunciations, status, href, charts }));
await browser.close();
