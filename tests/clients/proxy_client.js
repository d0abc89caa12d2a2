// node-postgres through `lakebase proxy`: no password; a query, COPY in and out, LISTEN/NOTIFY, a cancel.
// Usage: node proxy_client.js HOST PORT USER DATABASE  (NODE_PATH: where pg and pg-copy-streams are)
// Prints "ok <what>" lines; exits non-zero on the first failure.
'use strict';
const pg = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const [host, port, user, database] = process.argv.slice(2);
const config = { host, port: Number(port), user, database, password: undefined, connectionTimeoutMillis: 20000 };

function check(cond, what) {
  if (!cond) throw new Error('failed: ' + what);
  console.log("ok " + what);
}

async function main() {
  delete process.env.PGPASSWORD;
  const client = new pg.Client(config);
  await client.connect();
  const who = await client.query('SELECT current_user AS u, $1::int AS n', [42]);
  check(who.rows[0].u === user && who.rows[0].n === 42, 'query');

  await client.query('CREATE TEMP TABLE t (n int)');
  await new Promise((resolve, reject) => {
    const stream = client.query(copyFrom('COPY t FROM STDIN'));
    stream.on('finish', resolve);
    stream.on('error', reject);
    for (let i = 0; i < 100; i++) stream.write(`${i}\n`);
    stream.end();
  });
  const sum = await client.query('SELECT count(*)::int AS c, sum(n)::int AS s FROM t');
  check(sum.rows[0].c === 100 && sum.rows[0].s === 4950, 'copy in');
  const out = await new Promise((resolve, reject) => {
    const chunks = [];
    const stream = client.query(copyTo('COPY (SELECT n FROM t WHERE n < 3 ORDER BY n) TO STDOUT'));
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks).toString()));
    stream.on('error', reject);
  });
  check(out === '0\n1\n2\n', 'copy out');

  const notified = new Promise((resolve) => client.on('notification', resolve));
  await client.query('LISTEN node_channel');
  const other = new pg.Client(config);
  await other.connect();
  await other.query("NOTIFY node_channel, 'from node'");
  await other.end();
  const note = await Promise.race([notified, new Promise((_, rej) => {
    setTimeout(() => rej(new Error('no notification')), 10000).unref();  // unref: node exits when done
  })]);
  check(note.channel === 'node_channel' && note.payload === 'from node', 'listen/notify');

  // node-postgres has no public cancel: send the protocol's CancelRequest with the client's key.
  const sleeping = client.query('SELECT pg_sleep(30)').then(() => null, (err) => err);
  await new Promise((r) => setTimeout(r, 300));
  const con = new pg.Connection();
  con.connect(Number(port), host);
  con.on('connect', () => { con.cancel(client.processID, client.secretKey); });
  const err = await sleeping;
  check(err && err.code === '57014', 'cancel');
  const again = await client.query('SELECT 1 AS one');
  check(again.rows[0].one === 1, 'session after cancel');
  await client.end();
}

main().catch((err) => { console.error(err && err.stack || err); process.exit(1); });
