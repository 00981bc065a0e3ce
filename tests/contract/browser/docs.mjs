// Swagger UI as a consumer uses it: open /docs in headless Chromium, authorize with the API key,
// "Try it out" on POST /users and POST /v1/users with every request example the spec offers (its
// email made unique for this run), and read each live response status off the page: 201 for every
// example, then 409 for a repeat. The page must not reach any host but this machine's loopback.
//
// Env: BASE_URL (http://127.0.0.1:PORT), API_KEY, SCREENSHOT (default /tmp/users-api-docs.png).
// Prints one line per check and ends with "N passed, M failed"; exits 1 when a check failed.
// Run it through ../browser.sh, which starts a server of its own.
import { chromium } from 'playwright-core';

const BASE_URL = (process.env.BASE_URL ?? '').replace(/\/+$/, '');
const API_KEY = process.env.API_KEY ?? '';
const SCREENSHOT = process.env.SCREENSHOT || '/tmp/users-api-docs.png';
// Generous: a debug build hashes SignUp passwords with Argon2id before it answers.
const RESPONSE_TIMEOUT_MS = 60_000;
const UI_TIMEOUT_MS = 15_000;

// The operations and the request examples each must offer in its "Examples" dropdown, in order.
const OPERATIONS = [
  {
    id: 'createUser',
    method: 'POST',
    path: '/users',
    examples: ['NewContactUser', 'NewPersonUser', 'NewUserWithExternalId'],
  },
  {
    id: 'createUserV1',
    method: 'POST',
    path: '/v1/users',
    examples: ['NewSignUpUser', 'NewUserByOperator'],
  },
];
// Executed a second time with the very same body: the email is taken now.
const REPEAT = { op: 'createUser', example: 'NewContactUser', status: 409, error: 'email_exists' };

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);
// Schemes that never leave the page (inline images in Swagger UI's CSS, and the like).
const LOCAL_SCHEMES = new Set(['data:', 'blob:', 'about:']);

let passed = 0;
let failed = 0;
function check(ok, name, why = '') {
  if (ok) {
    passed += 1;
    console.log(`ok - ${name}`);
  } else {
    failed += 1;
    console.log(`not ok - ${name}${why ? ` # ${why}` : ''}`);
  }
}

/** An error's first line, with the locator Playwright was waiting for, if any. */
function briefly(error) {
  const lines = String(error?.message ?? error).split('\n');
  const waiting = lines.find((line) => /waiting for/.test(line));
  return [lines[0], waiting?.trim()].filter(Boolean).join(' ');
}

function finish(code) {
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(code ?? (failed > 0 ? 1 : 0));
}

if (!BASE_URL || !API_KEY) {
  console.error('docs.mjs: set BASE_URL (http://127.0.0.1:PORT) and API_KEY');
  check(false, 'environment', 'BASE_URL and API_KEY are required');
  finish(1);
}

const runId = `${Date.now()}${Math.floor(Math.random() * 1e6)}`;

/** The example's JSON with its email (and caller-chosen userId, if any) unique to this run. */
function uniqueBody(opId, example, json) {
  const body = JSON.parse(json);
  const tag = `${opId}.${example}.${runId}`.toLowerCase();
  let changed = false;
  for (const key of ['email', 'contactEmail']) {
    if (typeof body[key] === 'string') {
      body[key] = `ui.${tag}@example.com`;
      changed = true;
    }
  }
  if (typeof body.userId === 'string') body.userId = `ui-${tag}`;
  if (!changed) throw new Error(`example ${example} has no email field to make unique: ${json}`);
  return body;
}

const offLoopback = [];
let browser;
let page;
try {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-gpu',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(UI_TIMEOUT_MS);

  // Record every request the page makes; anything off this machine is a failure (listed at the
  // end) and is aborted, so that the test never sends traffic anywhere else.
  const isLocal = (raw) => {
    const url = new URL(raw);
    return LOCAL_SCHEMES.has(url.protocol) || LOOPBACK_HOSTS.has(url.hostname);
  };
  page.on('request', (request) => {
    if (!isLocal(request.url())) offLoopback.push(`${request.method()} ${request.url()}`);
  });
  await context.route('**/*', (route) =>
    isLocal(route.request().url()) ? route.continue() : route.abort('blockedbyclient'),
  );
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));

  // --- Swagger UI loads --------------------------------------------------------------------
  const docs = await page.goto(`${BASE_URL}/docs`);
  check(docs?.status() === 200, 'GET /docs 200', `status ${docs?.status()}`);
  for (const op of OPERATIONS) {
    await page.locator(`#operations-Users-${op.id}`).waitFor();
  }
  check(true, 'Swagger UI lists createUser and createUserV1');

  // --- Authorize ---------------------------------------------------------------------------
  await page.locator('.scheme-container button.authorize').click();
  const modal = page.locator('.modal-ux');
  await modal.waitFor();
  const bearer = modal.locator('.auth-container').filter({ hasText: 'bearerAuth' });
  await bearer.locator('input#auth-bearer-value').fill(API_KEY);
  await bearer.locator('.auth-btn-wrapper button.authorize').click();
  // Once authorized, Swagger UI says so and swaps the field for a masked value.
  await bearer.locator('h6', { hasText: 'Authorized' }).waitFor();
  await bearer.locator('.auth-btn-wrapper button.btn-done').click();
  await modal.waitFor({ state: 'detached' });
  check(
    await page.locator('.scheme-container button.authorize.locked').isVisible(),
    'authorized as bearerAuth in Swagger UI',
    'the Authorize button does not show the lock',
  );

  // --- Try it out ----------------------------------------------------------------------------
  const opBlock = (op) => page.locator(`#operations-Users-${op.id}`);

  async function openTryItOut(op) {
    const block = opBlock(op);
    await block.locator('.opblock-summary-control').click();
    await block.locator('.opblock-body').waitFor();
    await block.locator('.try-out__btn').click();
    await block.locator('.execute').waitFor();
  }

  /**
   * Select `example`, put `body` (or the example made unique) into the textarea, Execute, and
   * return the status code and body that the "Server response" table shows, with the request
   * that the page sent.
   */
  async function execute(op, example, body) {
    const block = opBlock(op);
    // Clear the previous live response, so that the one read below is this execution's own.
    const clear = block.locator('.btn-clear');
    if (await clear.isVisible()) {
      await clear.click();
      await block.locator('.live-responses-table').waitFor({ state: 'detached' });
    }
    const requestBody = block.locator('.opblock-section-request-body');
    const select = requestBody.locator('.examples-select select');
    await select.selectOption(example);
    const textarea = requestBody.locator('textarea.body-param__text');
    // The textarea shows the chosen example as the spec gives it (no edit of this run in it).
    await page.waitForFunction(
      ([el, id]) => el.value.trim().startsWith('{') && !el.value.includes(id),
      [await textarea.elementHandle(), runId],
    );
    if (body === undefined) body = uniqueBody(op.id, example, await textarea.inputValue());
    await textarea.fill(JSON.stringify(body, null, 2));
    // Swagger UI marks an edited example "[Modified value]" once the edit is in its state.
    await page.waitForFunction((el) => el.value === '__MODIFIED__VALUE__', await select.elementHandle());

    const url = `${BASE_URL}${op.path}`;
    const [response] = await Promise.all([
      page.waitForResponse(
        (r) => r.url() === url && r.request().method() === op.method,
        { timeout: RESPONSE_TIMEOUT_MS },
      ),
      block.locator('.execute').click(),
    ]);
    const statusCell = block.locator('.live-responses-table tbody .response-col_status').first();
    await statusCell.waitFor({ timeout: RESPONSE_TIMEOUT_MS });
    const shownStatus = (await statusCell.innerText()).trim();
    const shownBody = (
      await block.locator('.live-responses-table tbody .response-col_description .microlight').first().innerText()
    ).trim();
    const sent = response.request();
    return {
      body,
      shownStatus,
      shownBody,
      networkStatus: response.status(),
      sentBody: sent.postData() ?? '',
      sentAuth: (await sent.allHeaders())['authorization'] ?? '',
    };
  }

  function judge(name, result, wantStatus, wantError) {
    const { body, shownStatus, shownBody, networkStatus, sentBody, sentAuth } = result;
    const oneLine = (text) => text.replace(/\s+/g, ' ').slice(0, 300);
    const email = body.email ?? body.contactEmail;
    const problems = [];
    if (shownStatus !== String(wantStatus)) {
      problems.push(`page shows status ${JSON.stringify(shownStatus)}, want ${wantStatus}; body ${oneLine(shownBody)}`);
    }
    if (String(networkStatus) !== shownStatus) {
      problems.push(`network status ${networkStatus} differs from the page's ${JSON.stringify(shownStatus)}`);
    }
    if (!sentBody.includes(email)) {
      problems.push(`the page sent a body without the edited email ${email}: ${oneLine(sentBody)}`);
    }
    if (sentAuth !== `Bearer ${API_KEY}`) {
      problems.push(`the page sent Authorization ${JSON.stringify(sentAuth.slice(0, 12))}..., not the authorized key`);
    }
    if (wantStatus === 201 && !shownBody.includes(email)) {
      problems.push(`the page's response body does not show ${email}`);
    }
    if (wantError) {
      let code;
      try {
        code = JSON.parse(shownBody).error;
      } catch {
        code = undefined;
      }
      if (code !== wantError) problems.push(`page shows error ${JSON.stringify(code)}, want ${wantError}`);
    }
    check(problems.length === 0, name, problems.join('; '));
  }

  const sentBodies = new Map();
  for (const op of OPERATIONS) {
    await openTryItOut(op);
    const offered = await opBlock(op)
      .locator('.opblock-section-request-body .examples-select select option')
      .evaluateAll((options) => options.map((o) => o.value));
    check(
      JSON.stringify(offered) === JSON.stringify(op.examples),
      `${op.id} offers examples ${op.examples.join(', ')}`,
      `offered: ${offered.join(', ')}`,
    );
    for (const example of op.examples) {
      const name = `${op.id} ${example} 201`;
      if (!offered.includes(example)) {
        check(false, name, 'example not offered');
        continue;
      }
      try {
        const result = await execute(op, example);
        sentBodies.set(`${op.id}/${example}`, result.body);
        judge(name, result, 201);
      } catch (error) {
        check(false, name, briefly(error));
      }
    }
  }

  // --- The same body again: 409 ----------------------------------------------------------------
  {
    const op = OPERATIONS.find((o) => o.id === REPEAT.op);
    const name = `${op.id} ${REPEAT.example} again with the same body ${REPEAT.status} ${REPEAT.error}`;
    const body = sentBodies.get(`${op.id}/${REPEAT.example}`);
    if (!body) {
      check(false, name, 'the first execution did not happen');
    } else {
      try {
        judge(name, await execute(op, REPEAT.example, body), REPEAT.status, REPEAT.error);
      } catch (error) {
        check(false, name, briefly(error));
      }
    }
  }

  check(pageErrors.length === 0, 'no uncaught errors in the page', pageErrors.join(' | '));
} catch (error) {
  check(false, browser ? 'Swagger UI session' : 'launch /usr/bin/chromium', briefly(error));
} finally {
  // The page as it was left, passing or failing: the live responses of each operation show.
  if (page) {
    try {
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      console.log(`# screenshot: ${SCREENSHOT}`);
    } catch (error) {
      check(false, `screenshot to ${SCREENSHOT}`, briefly(error));
    }
  }
  await browser?.close();
}

check(
  offLoopback.length === 0,
  'the page requested nothing but 127.0.0.1 / localhost',
  `${offLoopback.length} request(s) to other hosts: ${offLoopback.join(', ')}`,
);
finish();
