// Opens a replay report (a local file) in headless Chromium with every
// network request refused: the page must be whole on its own. Prints what
// it found as one JSON line, and saves a screenshot.
import { launch, say, fail } from "./common.mjs";

const [file, shot] = process.argv.slice(2);
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const fetched = [];
await page.route("**/*", (route) => {
  const url = route.request().url();
  if (url.startsWith("file://")) return route.continue();
  fetched.push(url);
  return route.abort();
});
page.on("pageerror", (e) => fail("page error: " + e.message));
await page.goto("file://" + file);
const found = await page.evaluate(() => {
  const box = (el) => { const r = el.getBoundingClientRect(); return r.width > 100 && r.height > 50; };
  return {
    title: document.title,
    alarmCharts: [...document.querySelectorAll("svg.chart.alarms")].filter(box).length,
    bars: document.querySelectorAll("svg.chart.alarms rect").length,
    trendCharts: [...document.querySelectorAll("svg.chart.trend")].filter(box).length,
    spans: [document.querySelectorAll("svg.chart.trend rect.run0").length, document.querySelectorAll("svg.chart.trend rect.run1").length],
    kpiColumns: document.querySelectorAll("table.kpis tr:first-child th").length - 1,
    kpiRows: document.querySelectorAll("table.kpis tr").length - 1,
    sites: [...document.querySelectorAll("h3.site")].map((h) => h.textContent),
  };
});
await page.screenshot({ path: shot, fullPage: true });
found.fetched = fetched;
say(JSON.stringify(found));
await browser.close();
