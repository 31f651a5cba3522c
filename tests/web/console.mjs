// Drives the operator console of a running `mcp-ledger serve` in headless Chromium: an agent's
// token is refused, the operator signs in, the held call appears with its arguments, and the
// approve button releases it. Exits 0 on success, 1 with a message otherwise.
//
// Environment: CONSOLE_URL (http://127.0.0.1:PORT/console), OPERATOR_TOKEN, AGENT_TOKEN,
// EXPECT_TOOL (the held tool), EXPECT_TEXT (a string the arguments show), optional CHROMIUM
// (default /usr/bin/chromium) and SCREENSHOT (a PNG path, written after the call appears).
//
// playwright-core comes from tests/npm (`npm ci --prefix tests/npm`); it never downloads a
// browser: Debian's chromium is used.

import { createRequire } from 'node:module';

const require = createRequire(new URL('../npm/package.json', import.meta.url));
const { chromium } = require('playwright-core');

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const consoleUrl = env('CONSOLE_URL');
const operatorToken = env('OPERATOR_TOKEN');
const agentToken = env('AGENT_TOKEN');
const tool = env('EXPECT_TOOL');
const expectText = env('EXPECT_TEXT');
const STEP = { timeout: 20_000 };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const problems = [];
try {
  const page = await browser.newPage();
  // A CSP violation or script error means the page is broken, even if the steps pass.
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });

  await page.goto(consoleUrl, STEP);

  // An agent's token is refused, and the page says why.
  await page.fill('#token', agentToken, STEP);
  await page.click('#sign-in', STEP);
  await page.waitForFunction(
    () => document.getElementById('error').textContent.includes("agent's token"),
    null,
    STEP,
  );
  if (await page.isVisible('#queue')) throw new Error('the queue was shown to an agent token');
  // The 403 itself is logged by Chromium as a failed resource; that is expected here.
  problems.length = 0;

  await page.fill('#token', operatorToken, STEP);
  await page.click('#sign-in', STEP);
  await page.waitForSelector('#who:has-text("operator/")', STEP);

  const card = page.locator(`article.hold[data-tool="${tool}"]`);
  await card.waitFor({ state: 'visible', ...STEP });
  const shown = await card.locator('pre.arguments').textContent();
  if (!shown.includes(expectText)) {
    throw new Error(`the arguments shown do not include ${expectText}: ${shown}`);
  }
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });

  // Deny without a reason is refused by the page itself.
  await card.locator('button.deny').click(STEP);
  await card.locator('.note:has-text("needs a reason")').waitFor(STEP);

  await card.locator('input.reason').fill('checked with the customer', STEP);
  await card.locator('button.approve').click(STEP);
  await page.waitForSelector('#status:has-text("Approved")', STEP);
  await card.waitFor({ state: 'detached', ...STEP });

  if (problems.length) throw new Error(problems.join('\n'));
  console.log(`approved ${tool} through the console`);
} catch (error) {
  console.error(`console test failed: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
