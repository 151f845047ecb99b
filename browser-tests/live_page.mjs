// Drives the gateway's live page in headless Chromium, one command per stdin
// line, one answer per stdout line (the Rust test `live_page` is the other side).
//
//   node live_page.mjs <page URL with #token=…> <screenshot.png>
//   (or LIVE_PAGE_URL / LIVE_PAGE_SCREENSHOT; CHROMIUM_PATH, default /usr/bin/chromium)
//
// Once the page says "connected" and has rendered its list it prints READY, then:
//   ROWS                          -> ROWS <JSON array of the rendered rows>
//   EXPECT <manga> <chapter>      -> SEEN <ms>: the row shows that chapter and is
//                                    highlighted within 1 s of reading the line
//   GONE <manga>                  -> GONE <ms>: the row disappeared within 1 s
//   CALM                          -> CALM <ms>: no row is highlighted (within 5 s)
//   UPDATE <manga> <chapter> [page] [status]
//                                 -> SENT <ms> <ack text>: the page's form saved it
//   STATE <state>                 -> STATE <state> <status text> (within 20 s; for
//                                    connected, once the list is re-read too)
//   SCREENSHOT                    -> SAVED <path> (full page)
//   QUIT, or end of input         -> closes the browser, exits 0
// Any failure: a line on stderr saying what went wrong, exit code 1.

import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const url = process.argv[2] ?? process.env.LIVE_PAGE_URL;
const shotPath = process.argv[3] ?? process.env.LIVE_PAGE_SCREENSHOT;
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const STARTUP_MS = Number(process.env.LIVE_PAGE_STARTUP_MS ?? 60000);
const LIVE_MS = 1000;

function fail(message) {
  process.stderr.write(`live_page: ${message}\n`);
  process.exit(1);
}

if (!url || !shotPath) fail("usage: node live_page.mjs <page URL> <screenshot path>");
if (!existsSync(executablePath)) {
  fail(`no Chromium at ${executablePath}: apt-get install chromium (or set CHROMIUM_PATH)`);
}

const say = (line) => process.stdout.write(line + "\n");
const since = (t0) => Math.round(performance.now() - t0);

const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
let done = false;
async function finish(code, message) {
  if (done) return;
  done = true;
  if (message) process.stderr.write(`live_page: ${message}\n`);
  await browser.close().catch(() => {});
  process.exit(code);
}

const context = await browser.newContext({ viewport: { width: 1000, height: 400 } });
const page = await context.newPage();
page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
page.on("pageerror", (e) => finish(1, `script error in the page: ${e.message}`));

const row = (manga) => `#rows tr[data-manga-id="${Number(manga)}"]`;

async function ready() {
  await page.goto(url);
  try {
    await page.waitForSelector('#status[data-state="connected"]', { timeout: STARTUP_MS });
    await page.waitForSelector('#progress[data-ready="true"]', { timeout: STARTUP_MS });
  } catch {
    const status = await page.textContent("#status").catch(() => "?");
    throw new Error(`the page did not connect and render its list (status: ${status})`);
  }
  say("READY");
}

const commands = {
  async ROWS() {
    const rows = await page.$$eval("#rows tr[data-manga-id]", (trs) =>
      trs.map((tr) => {
        const text = (cls) => tr.querySelector(`td.${cls}`).textContent;
        return {
          manga_id: Number(tr.dataset.mangaId),
          chapter: text("chapter"),
          page: text("page"),
          status: text("status"),
          device: text("device"),
        };
      }),
    );
    say(`ROWS ${JSON.stringify(rows)}`);
  },

  async EXPECT(manga, chapter) {
    const t0 = performance.now();
    try {
      await page.waitForFunction(
        ([sel, want]) => {
          const tr = document.querySelector(sel);
          const got = tr?.querySelector("td.chapter")?.textContent;
          return got !== undefined && Number(got) === Number(want) && tr.classList.contains("flash");
        },
        [row(manga), chapter],
        { timeout: LIVE_MS, polling: 10 },
      );
    } catch {
      const got = await page.$eval(`${row(manga)} td.chapter`, (td) => td.textContent).catch(() => "no row");
      throw new Error(`manga ${manga} did not show chapter ${chapter} (highlighted) within ${LIVE_MS} ms: ${got}`);
    }
    say(`SEEN ${since(t0)}`);
  },

  async GONE(manga) {
    const t0 = performance.now();
    try {
      await page.waitForSelector(row(manga), { state: "detached", timeout: LIVE_MS });
    } catch {
      throw new Error(`the row of manga ${manga} was still there after ${LIVE_MS} ms`);
    }
    say(`GONE ${since(t0)}`);
  },

  async CALM() {
    const t0 = performance.now();
    await page.waitForFunction(() => !document.querySelector("#rows tr.flash"), null, { timeout: 5000 });
    say(`CALM ${since(t0)}`);
  },

  async UPDATE(manga, chapter, pageNo = "", status = "") {
    if (!manga || !chapter) throw new Error("UPDATE <manga> <chapter> [page] [status]");
    const t0 = performance.now();
    await page.fill("#f-manga", manga);
    await page.fill("#f-chapter", chapter);
    await page.fill("#f-page", pageNo);
    await page.selectOption("#f-status", status);
    await page.$eval("#result", (o) => { o.dataset.result = "none"; o.textContent = ""; });
    await page.click("#f-send");
    const handle = await page.waitForSelector('#result[data-result="ack"], #result[data-result="error"]', {
      timeout: 10000,
    });
    const [kind, text] = await handle.evaluate((o) => [o.dataset.result, o.textContent]);
    if (kind !== "ack") throw new Error(`the page's update failed: ${text}`);
    say(`SENT ${since(t0)} ${text}`);
  },

  async STATE(state) {
    try {
      await page.waitForSelector(`#status[data-state="${state}"]`, { timeout: 20000 });
      // Connected again: the list is re-read too.
      if (state === "connected") await page.waitForSelector('#progress[data-ready="true"]', { timeout: 20000 });
    } catch {
      throw new Error(`the status did not become ${state}: ${await page.textContent("#status")}`);
    }
    say(`STATE ${state} ${await page.textContent("#status")}`);
  },

  async SCREENSHOT() {
    await page.screenshot({ path: shotPath, fullPage: true });
    say(`SAVED ${shotPath}`);
  },
};

try {
  await ready();
  for await (const line of createInterface({ input: process.stdin })) {
    const [name, ...args] = line.trim().split(/\s+/);
    if (!name) continue;
    if (name === "QUIT") break;
    const command = commands[name];
    if (!command) throw new Error(`unknown command: ${line}`);
    await command(...args);
  }
  await finish(0);
} catch (e) {
  await finish(1, e.message);
}
