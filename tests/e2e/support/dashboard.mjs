// Drives a coordinator's dashboard in headless Chromium (playwright-core,
// the Debian chromium) for tests/e2e/observe/dashboard.rs.
//
//   1. opens the page, which asks for a token; checks the data endpoints
//      refuse a request without one; enters the token;
//   2. checks the task named XSS_NAME is listed with that name as text
//      (no element made from it, no script run);
//   3. prints `dashboard: signed in` and waits for a task named DAG_NAME to
//      appear in the list (the test submits it now), prints its id;
//   4. opens it: its DAG has DAG_NODES subtask nodes and DAG_EDGES edges,
//      the task is running; writes a screenshot to SCREENSHOT;
//   5. without a reload, sees the task and every node turn completed.
//
// Environment: PLAYWRIGHT_CORE (the playwright-core directory),
// DASHBOARD_URL, DASHBOARD_TOKEN, XSS_NAME, DAG_NAME, DAG_NODES, DAG_EDGES,
// SCREENSHOT. Prints `dashboard: ok` and exits 0 when every check held;
// any failed check prints `dashboard: FAILED: ...` and exits 1.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

function need(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

function fail(message) {
  console.error(`dashboard: FAILED: ${message}`);
  process.exit(1);
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const { chromium } = require(need('PLAYWRIGHT_CORE'));
const url = need('DASHBOARD_URL');
const token = need('DASHBOARD_TOKEN');
const xssName = need('XSS_NAME');
const dagName = need('DAG_NAME');
const dagNodes = Number(need('DAG_NODES'));
const dagEdges = Number(need('DAG_EDGES'));
const screenshot = need('SCREENSHOT');
const origin = new URL(url).origin;

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});

let exitCode = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const foreign = [];
  const problems = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(origin)) foreign.push(request.url());
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !/401|Unauthorized/.test(message.text())) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  page.on('dialog', (dialog) => {
    problems.push(`a dialog opened: ${dialog.message()}`);
    dialog.dismiss();
  });

  await page.goto(url);
  await page.waitForSelector('#token-form:not([hidden])', { timeout: 15000 });
  const refused = await page.evaluate(async () => (await fetch('/api/tasks')).status);
  check(refused === 401, `GET /api/tasks without a token answered ${refused}, not 401`);
  const wrong = await page.evaluate(async () =>
    (await fetch('/api/tasks', { headers: { Authorization: 'Bearer amt_wrong' } })).status);
  check(wrong === 401, `GET /api/tasks with a wrong token answered ${wrong}, not 401`);
  await page.fill('#token', token);
  await page.click('#token-form button[type=submit]');
  await page.waitForSelector('#main:not([hidden])', { timeout: 15000 });
  check(await page.isHidden('#token-form'), 'the token form is still shown');
  const kept = await page.evaluate(() => sessionStorage.getItem('agentmesh.dashboard.token'));
  check(kept === token, 'the token is not kept in sessionStorage');

  // The cluster: agents from the registry, with the leader marked.
  await page.waitForSelector('#agents tbody tr[data-agent-id]', { timeout: 15000 });
  const agents = await page.$$eval('#agents tbody tr[data-agent-id]', (rows) =>
    rows.map((row) => row.dataset.agentId));
  check(agents.length >= 2, `the cluster shows ${agents.length} agent(s): ${agents}`);
  check(await page.$('#agents .tag.leader') !== null, 'no agent is marked leader');

  // Hostile text renders as text.
  const xssRow = await page.waitForSelector('#tasks tbody tr[data-task-id]', { timeout: 15000 });
  check(xssRow !== null, 'the task list is empty');
  const names = await page.$$eval('#tasks tbody tr td.name', (cells) => cells.map((c) => c.textContent));
  check(names.includes(xssName), `no task listed with the name ${JSON.stringify(xssName)}: ${JSON.stringify(names)}`);
  check((await page.$$('#tasks img, #tasks script')).length === 0, 'a task name became markup');
  check(await page.evaluate(() => window.__xss === undefined), 'a task name ran script');

  // The marker survives only if the page is never reloaded.
  await page.evaluate(() => { window.__notReloaded = true; });
  console.log('dashboard: signed in');

  const row = await page.waitForSelector(`#tasks tbody tr[data-task-id]:has(td.name:text-is(${JSON.stringify(dagName)}))`, { timeout: 30000 });
  const taskId = await row.getAttribute('data-task-id');
  console.log(`dashboard: listed ${taskId}`);
  await row.click();
  await page.waitForFunction((n) => document.querySelectorAll('#dag g.node').length === n, dagNodes, { timeout: 15000 });
  const edges = await page.$$eval('#dag path.edge', (paths) => paths.length);
  check(edges === dagEdges, `the DAG has ${edges} edges, not ${dagEdges}`);
  const status = await page.textContent('#task-status');
  check(status === 'running', `the task shows ${status}, not running (its slow step should still run)`);
  const running = await page.$$eval('#dag g.node[data-status=running]', (nodes) => nodes.length);
  check(running >= 1, 'no subtask node shows running');
  await page.click('#dag g.node[data-status=running]');
  await page.waitForSelector('#subtask:not([hidden])', { timeout: 5000 });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`dashboard: running with ${dagNodes} nodes, ${edges} edges; screenshot ${screenshot}`);

  await page.waitForFunction(() => document.querySelector('#task-status').textContent === 'completed', null, { timeout: 60000 });
  const done = await page.$$eval('#dag g.node', (nodes) => nodes.map((n) => n.dataset.status));
  check(done.length === dagNodes && done.every((s) => s === 'completed'), `subtask states after completion: ${done}`);
  check(await page.evaluate(() => window.__notReloaded === true), 'the page was reloaded');
  // The list is read in the same round, just before the task.
  await page.waitForSelector(`#tasks tbody tr[data-task-id="${taskId}"][data-status=completed]`, { timeout: 5000 });
  check(foreign.length === 0, `requests left the node: ${foreign.join(', ')}`);
  check(problems.length === 0, problems.join('; '));
  console.log('dashboard: completed without a reload');
  console.log('dashboard: ok');
} catch (error) {
  console.error(`dashboard: FAILED: ${error.message}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
