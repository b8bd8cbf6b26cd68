// The approval page in a real browser (SPEC §17), driven by playwright-core
// with Debian's chromium. Run by bins/madre/tests/browser.rs, which starts
// the real binary against vx11-stubs and passes, in the environment:
// BASE, PLAYWRIGHT_DIR, CHROMIUM, PLAN (a HIGH plan alice asked for, 0/2),
// CONFIRM_TOKEN, APPROVE_URL (its approve link, token in the fragment),
// ALICE (the operator who asked), BOB, CAROL (admins), VERA (a viewer),
// OTHER (a second plan whose text is HTML), SCREENSHOT (where to
// save one). Exits non-zero with a message on the first failure.
import { createRequire } from "node:module";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const require = createRequire(env("PLAYWRIGHT_DIR") + "/");
const { chromium } = require("playwright-core");

const BASE = env("BASE");
const PLAN = env("PLAN");
const PATIENCE = 15000;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function textOf(page, selector, expected) {
  await page.waitForFunction(
    ([sel, want]) => document.querySelector(sel)?.textContent === want,
    [selector, expected],
    { timeout: PATIENCE },
  ).catch(async () => {
    const got = await page.locator(selector).textContent();
    throw new Error(`${selector}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
  });
}

async function signIn(page, token) {
  await page.fill("#api-token", token);
  await page.click("#sign-in-form button[type=submit]");
  await page.locator("#app").waitFor({ state: "visible", timeout: PATIENCE });
}

/** A page that records console errors (a CSP violation is one). */
async function openPage(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  // An alert would be a script from a request's text.
  page.on("dialog", (d) => {
    errors.push(`a dialog opened: ${d.message()}`);
    d.dismiss();
  });
  await page.goto(url);
  return { page, errors };
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  // alice may not approve her own plan: refused, the reason shown.
  const alice = await openPage(browser, `${BASE}/ui/plans/${PLAN}`);
  await signIn(alice.page, env("ALICE"));
  await textOf(alice.page, "#plan-status", "WAITING");
  await alice.page.fill("#confirm-token", env("CONFIRM_TOKEN"));
  await alice.page.click("#approve");
  await alice.page.waitForFunction(
    () => document.querySelector("#decide-result")?.textContent.startsWith("403"),
    null,
    { timeout: PATIENCE },
  );
  const refusal = await alice.page.locator("#decide-result").textContent();
  check(/admin/.test(refusal), `the refusal says why: ${refusal}`);
  // The browser logs the refused request itself; nothing else may be.
  check(alice.errors.every((e) => e.includes("status of 403")), `alice: ${alice.errors}`);
  alice.errors.length = 0;

  // vera (a viewer) sees the waiting plan but no approve button.
  const vera = await openPage(browser, `${BASE}/ui/plans/${PLAN}`);
  await signIn(vera.page, env("VERA"));
  await textOf(vera.page, "#plan-status", "WAITING");
  check(await vera.page.locator("#decide").isHidden(), "a viewer sees no approve button");

  // bob signs in, sees alice's plan WAITING with 0 of 2 approvals.
  const bob = await openPage(browser, `${BASE}/ui`);
  await signIn(bob.page, env("BOB"));
  await textOf(bob.page, "#who", "bob (admin)");
  const item = bob.page.locator(`#waiting li[data-plan="${PLAN}"]`);
  await item.waitFor({ timeout: PATIENCE });
  await item.click();
  await textOf(bob.page, "#plan-status", "WAITING");
  await textOf(bob.page, "#plan-approvals", "0/2");
  await textOf(bob.page, "#plan-text", "delete all data");
  await textOf(bob.page, "#plan-requester", "alice");
  await textOf(bob.page, "#plan-risk", "HIGH");
  const fingerprint = await bob.page.locator("#plan-fingerprint").textContent();
  check(/^[0-9a-f]{64}$/.test(fingerprint), `fingerprint shown: ${fingerprint}`);

  // bob approves with the token alice gave him: 1 of 2.
  await bob.page.fill("#confirm-token", env("CONFIRM_TOKEN"));
  await bob.page.fill("#reason", "checked the targets");
  await bob.page.click("#approve");
  await textOf(bob.page, "#plan-approvals", "1/2");
  await textOf(bob.page, "#plan-status", "WAITING");
  // Every status bob's page shows from now on, as it shows it.
  await bob.page.evaluate(() => {
    window.seen = [];
    const status = document.querySelector("#plan-status");
    new MutationObserver(() => window.seen.push(status.textContent)).observe(status, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });

  // carol opens the approve link: the token comes from the fragment, which
  // then leaves the address bar.
  const carol = await openPage(browser, env("APPROVE_URL"));
  await signIn(carol.page, env("CAROL"));
  await textOf(carol.page, "#plan-status", "WAITING");
  check(!carol.page.url().includes("#token"), `the token left the URL: ${carol.page.url()}`);
  const filled = await carol.page.inputValue("#confirm-token");
  check(filled === env("CONFIRM_TOKEN"), "the token from the link is filled in");
  await carol.page.click("#approve");

  // bob's page, never reloaded, follows the plan through the event stream:
  // its steps run and it ends DONE.
  await textOf(bob.page, "#plan-status", "DONE");
  const seen = await bob.page.evaluate(() => window.seen);
  check(seen.includes("RUNNING"), `the page showed the plan running: ${seen}`);
  await textOf(bob.page, "#plan-approvals", "2/2");
  await bob.page.screenshot({ path: env("SCREENSHOT"), fullPage: true });
  const steps = await bob.page.locator("#plan-steps tr td:last-child").allTextContents();
  check(steps.length > 0 && steps.every((s) => s === "DONE"), `steps: ${steps}`);
  check(await bob.page.locator("#decide").isHidden(), "no approve form on a DONE plan");

  // The other plan's text, which is HTML, is shown as text and never runs.
  await vera.page.goto(`${BASE}/ui/plans/${env("OTHER")}`);
  await vera.page.locator("#app").waitFor({ state: "visible", timeout: PATIENCE });
  await textOf(vera.page, "#plan-text", "<img src=x onerror=alert(1)>");
  check((await vera.page.locator("#detail img").count()) === 0, "no image element was made");

  for (const [who, { errors }] of Object.entries({ alice, bob, carol, vera })) {
    check(errors.length === 0, `${who}'s page logged errors (CSP?): ${errors.join(" | ")}`);
  }
  console.log("approval page: every check passed");
} finally {
  await browser.close();
}
