// Load client for scripts/bench-signal: ROOMS rooms with two clients each;
// in every room one client sends an offer and the other answers at once.
//  - closed loop (RATE 0 or absent): the next offer goes when the answer is
//    back (one exchange in flight per room): measures what the server sustains;
//  - open loop (RATE > 0 offers/s for this process, spread over its rooms):
//    offers go on a fixed schedule whatever the answers do, so every server
//    gets the same offered load and its CPU per message can be compared.
// With START_MS (epoch ms), measuring starts then (several processes share one
// window that the bench also reads CPU over); otherwise after 1 s of warm-up.
// Prints {relayed, offered, late_ms, elapsed_s, rtts_ms:[...]} as JSON (bench-signal
// runs several of these at once and merges them).
// Usage: node bench_client.js ws|sio URL_A[,URL_B] ROOMS SECONDS [RATE [START_MS]]
"use strict";
const WebSocket = require("ws");
const sioClient = require("socket.io-client");
const [mode, urls, roomsArg, secondsArg, rateArg, startArg] = process.argv.slice(2);
const rate = Number(rateArg || 0);
const [urlA, urlB] = [urls.split(",")[0], urls.split(",")[1] || urls.split(",")[0]];
const rooms = Number(roomsArg), seconds = Number(secondsArg);
const room = (i) => "bench-" + process.pid + "-" + i;

// A uniform client: join(room) -> {id, peers}, send(type, to, sdp), on(type, fn(msg)).
function wsClient(url) {
  const ws = new WebSocket(url);
  const handlers = {};
  ws.on("message", (data) => { const m = JSON.parse(data); (handlers[m.type] || (() => {}))(m); });
  return {
    open: () => new Promise((ok, bad) => { ws.on("open", ok); ws.on("error", bad); }),
    join: (r) => new Promise((ok) => { handlers.created = (m) => ok({ id: m.id, peers: m.peers }); ws.send(JSON.stringify({ type: "join", room: r })); }),
    send: (type, to, sdp) => ws.send(JSON.stringify({ type, to, sdp })),
    on: (type, fn) => { handlers[type] = fn; },
    close: () => ws.close(),
  };
}
function sioClientOf(url) {
  const s = sioClient(url, { transports: ["websocket"], reconnection: false });
  return {
    open: () => new Promise((ok, bad) => { s.on("connect", ok); s.on("connect_error", bad); }),
    join: (r) => new Promise((ok) => { s.once("created", (m) => ok({ id: m.id, peers: m.peers.map((p) => p.id) })); s.emit("createAndJoinRoom", { room: r }); }),
    send: (type, to, sdp) => s.emit(type, { to, sdp }),
    on: (type, fn) => s.on(type, fn),
    close: () => s.close(),
  };
}
const make = mode === "ws" ? wsClient : sioClientOf;

(async () => {
  const pairs = [];
  for (let i = 0; i < rooms; i++) {
    const a = make(urlA), b = make(urlB);
    await Promise.all([a.open(), b.open()]);
    const ja = await a.join(room(i));
    const jb = await b.join(room(i));
    if (jb.peers[0] !== ja.id) throw new Error("room " + i + ": B does not see A");
    pairs.push({ a, b, aId: ja.id, bId: jb.id });
  }
  let measuring = false, stopped = false, relayed = 0, offered = 0;
  const rtts = [];
  const timers = [];
  for (const p of pairs) {
    p.a.on("offer", (m) => p.a.send("answer", m.from, m.sdp));
    const offer = () => {
      if (stopped) return;
      if (measuring) offered += 1;
      p.b.send("offer", p.aId, String(process.hrtime.bigint()));
    };
    p.b.on("answer", (m) => {
      if (measuring) { relayed += 2; rtts.push(Number(process.hrtime.bigint() - BigInt(m.sdp)) / 1e6); }
      if (rate === 0) offer();
    });
    if (rate === 0) {
      offer();
    } else {
      // Each room offers every rooms/rate seconds, rooms started at spread-out phases.
      const period = (1000 * pairs.length) / rate;
      timers.push(setTimeout(() => { offer(); timers.push(setInterval(offer, period)); }, Math.random() * period));
    }
  }
  const startAt = startArg ? Number(startArg) : Date.now() + 1000; // warm-up until then
  const lateMs = Math.max(0, Date.now() - startAt); // set-up overran the shared window's start
  await new Promise((r) => setTimeout(r, Math.max(0, startAt - Date.now())));
  measuring = true;
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  stopped = true;
  for (const t of timers) { clearTimeout(t); clearInterval(t); }
  process.stdout.write(JSON.stringify({ relayed, offered, late_ms: lateMs, elapsed_s: elapsed, rtts_ms: rtts.map((x) => Math.round(x * 1000) / 1000) }) + "\n");
  for (const p of pairs) { p.a.close(); p.b.close(); }
  setTimeout(() => process.exit(0), 200);
})().catch((e) => { process.stderr.write("bench client: " + e.stack + "\n"); process.exit(1); });
