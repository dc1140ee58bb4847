// The board under load: 500+ active alarms across the 241 Akita sites. Run by
// tests/browser.rs. Logs in, waits for every alarm row, prints READY <rows>;
// then for each `EXPECT <epoch_ms> <site>` line on stdin (the Rust test wrote it right
// after publishing one new alarm event to the broker) waits for that alarm's row
// and prints `LAT <ms>`: publish -> MQTT -> pipeline -> store -> event stream
// -> row on screen. Finally times the 241-tile site overview (SITES <ms>).
//
// usage: node load.mjs BASE_URL USER PASS OUT_DIR
import { fail, launch, login, say } from "./common.mjs";

const [base, user, pass, outDir] = process.argv.slice(2);
// stdin as lines, buffered here (readline's async iterator can drop lines that
// arrive while the loop is busy waiting on the browser).
let buf = "", waiter = null;
const queue = [];
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => {
  buf += d;
  let i;
  while ((i = buf.indexOf("\n")) >= 0) { queue.push(buf.slice(0, i)); buf = buf.slice(i + 1); }
  if (waiter && queue.length) { const w = waiter; waiter = null; w(queue.shift()); }
});
process.stdin.on("end", () => { queue.push("END"); if (waiter) { const w = waiter; waiter = null; w(queue.shift()); } });
const nextLine = () => queue.length ? Promise.resolve(queue.shift()) : new Promise((r) => { waiter = r; });

const browser = await launch();
try {
  const ctx = await browser.newContext({ viewport: { width: 3840, height: 2160 }, locale: "ja-JP" });
  const page = await ctx.newPage();
  await login(page, base, user, pass);
  const rows = page.locator("tr[data-id]");
  await rows.nth(499).waitFor({ timeout: 30000 }).catch(async (e) => {
    await page.screenshot({ path: `${outDir}/board-500-alarms-failed.png` });
    fail(`only ${await rows.count()} rows (${await page.locator("#summary").textContent()}): ${e}`);
  });
  const count = await rows.count();
  await page.screenshot({ path: `${outDir}/board-500-alarms-4k.png` });
  say("READY " + count);
  for (;;) {
    const value = await nextLine();
    if (value === "END") break;
    const [cmd, at, site] = value.split(" ");
    if (cmd !== "EXPECT") fail("unexpected input " + value);
    const row = page.locator("tr[data-id]", { hasText: site }).filter({ hasText: "扉開" });
    await row.waitFor({ timeout: 30000 }).catch(async (e) => {
      await page.screenshot({ path: `${outDir}/board-500-alarms-failed.png` });
      fail(`row for ${site} did not appear: ${await rows.count()} rows, ${await page.locator("#summary").textContent()}, banner ${await page.locator("#banner").textContent()}: ${e}`);
    });
    say("LAT " + (Date.now() - Number(at)));
  }
  const t0 = Date.now();
  await page.click("#tabs button[data-tab=sites]");
  await page.locator(".tile").nth(240).waitFor({ timeout: 30000 });
  say("SITES " + (Date.now() - t0));
  await page.screenshot({ path: `${outDir}/board-241-sites-4k.png` });
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await browser.close();
  process.stdin.destroy(); // or the stdin listener keeps node running
}
