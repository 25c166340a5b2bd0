// Firefox ESR driven by puppeteer-core over WebDriver BiDi (no geckodriver, nothing
// downloaded), for bench/engines.py: one JSON command per stdin line, one JSON answer per
// stdout line.
//   {"op": "open", "url": URL, "init": JS}  a new page (the previous one closes) that runs
//                                            JS before any of its own scripts
//   {"op": "eval", "js": EXPRESSION}        {"value": what it evaluates to (JSON)}
//   {"op": "leave"}                         closes the page
//   {"op": "close"}                         closes the browser and exits
// Errors answer {"error": message}. Needs a display (Xvfb) for WebGL: DISPLAY from the env.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

// puppeteer-core is a dev dependency of the page (web/package.json): resolved from there.
const fromWeb = createRequire(new URL("../web/package.json", import.meta.url));
const { default: puppeteer } = await import(pathToFileURL(fromWeb.resolve("puppeteer-core")).href);

const executablePath = process.env.STREAMFER_FIREFOX || "/usr/bin/firefox-esr";
const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath,
  headless: false,
  args: ["--width=1280", "--height=900"],
  extraPrefsFirefox: {
    "media.navigator.permission.disabled": true,
    "media.autoplay.default": 0,
    "browser.sessionstore.resume_from_crash": false,
  },
});
let page = null;

async function handle(cmd) {
  switch (cmd.op) {
    case "open":
      if (page) await page.close();
      page = await browser.newPage();
      await page.setViewport({ width: 390, height: 844 });
      await page.evaluateOnNewDocument(cmd.init);
      await page.goto(cmd.url);
      return { value: null };
    case "leave":
      if (page) await page.close();
      page = null;
      return { value: null };
    case "eval":
      return { value: (await page.evaluate(cmd.js)) ?? null }; // (JSON has no undefined)
    case "close":
      await browser.close();
      return { value: null };
    default:
      return { error: `unknown op ${cmd.op}` };
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  let cmd = {};
  try {
    cmd = JSON.parse(line);
    answer = await handle(cmd);
  } catch (err) {
    answer = { error: String((err && err.message) || err) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
  if (cmd.op === "close") break;
}
process.exit(0);
