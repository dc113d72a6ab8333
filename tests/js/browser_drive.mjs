// Drives a real headless Chromium (Debian's `chromium`, through puppeteer-core) to a page
// that runs @electric-sql/client against edgeguard: bundles tests/js/browser_page.mjs with
// esbuild, serves it on http://localhost:<free port>/ (a real origin, so CORS applies), opens
// it with ?gk=<base URL of Envoy's gatekeeper listener>, waits until the page has synced,
// seen its token expire, refreshed it and synced again (or the time is up), and prints
// {"log": [...page events], "console": [...]} as JSON.
// args: <gatekeeper base URL> <seconds> <path of browser_page.mjs>
// Run with the working directory holding node_modules (make js-clients).
import http from "node:http";
import path from "node:path";
import { build } from "esbuild";
import puppeteer from "puppeteer-core";

const [gk, seconds, pageSource] = process.argv.slice(1);
const bundle = await build({
  entryPoints: [pageSource],
  bundle: true,
  format: "iife",
  platform: "browser",
  write: false,
  nodePaths: [path.join(process.cwd(), "node_modules")],
  logLevel: "error",
});
const js = bundle.outputFiles[0].text;
const html = `<!doctype html><meta charset="utf-8"><title>edgeguard browser test</title><script src="/app.js"></script>`;
const server = http.createServer((req, res) => {
  if (req.url.startsWith("/app.js")) {
    res.writeHead(200, { "content-type": "text/javascript" });
    return res.end(js);
  }
  res.writeHead(200, { "content-type": "text/html" });
  res.end(html);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;

const browser = await puppeteer.launch({
  executablePath: process.env.EDGEGUARD_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const consoleLines = [];
let log = [];
try {
  const page = await browser.newPage();
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`.slice(0, 300)));
  await page.goto(`http://localhost:${port}/?gk=${encodeURIComponent(gk)}`);
  const deadline = Date.now() + Number(seconds) * 1000;
  while (Date.now() < deadline) {
    log = await page.evaluate(() => (window.__edgeguard ? window.__edgeguard.log : []));
    const refreshed = log.findIndex((e) => e.event === "refreshed" && e.status === 200);
    const resumed = refreshed >= 0 && log.slice(refreshed).some((e) => e.event === "messages" && e.upToDate);
    const stopped = log.some((e) => e.event === "exception" || (e.event === "error" && e.status !== 401));
    if (resumed || stopped || log.some((e) => e.event === "granted" && e.status !== 200)) break;
    await new Promise((r) => setTimeout(r, 200));
  }
} finally {
  await browser.close();
  server.close();
}
process.stdout.write(JSON.stringify({ log, console: consoleLines }));
