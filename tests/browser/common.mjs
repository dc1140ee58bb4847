// Shared by the board scripts: the line protocol with the Rust test, Debian's
// Chromium with flags for a quiet headless run on loopback, and the login.
import { chromium } from "playwright-core";

export const say = (line) => process.stdout.write(line + "\n");
export const fail = (msg) => { process.stderr.write("FAIL " + msg + "\n"); process.exit(1); };

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

export async function login(page, base, user, pass) {
  await page.goto(base + "/");
  await page.fill("#user", user);
  await page.fill("#pass", pass);
  await page.click("#login button");
}

// Fails the run on any Content-Security-Policy violation the page reports: the
// board must work under a policy without 'unsafe-inline'.
export function watchCsp(page) {
  page.on("console", (m) => {
    const t = m.text();
    if (/Content Security Policy|Refused to (execute|apply|load)/i.test(t)) fail("CSP violation: " + t);
  });
  page.on("pageerror", (e) => fail("page error: " + e.message));
}
