// The classic WebRTC tutorial's signaling client, on socket.io-client 2.x,
// played as a scripted sequence against `natkit signal`. Prints one JSON line
// per event received on stdout; exits 0 when the sequence completes.
//
// Usage: node tutorial_client.js URL ROOM
//   created            -> wait for a peer
//   joined {id}        -> offer to it
//   answer             -> candidate to it (the tutorial's {sdpMid, sdpMLineIndex, sdp})
//   exit {from, room}  -> the peer left; when it joins again, hang up (disconnect)
"use strict";
const io = require("socket.io-client");
const [url, room] = process.argv.slice(2);
const socket = io(url, { transports: ["polling", "websocket"], reconnection: false, timeout: 10000 });
let myId = null;
let joins = 0;
const out = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");

socket.on("connect", () => socket.emit("createAndJoinRoom", { room }));
socket.on("created", (d) => { myId = d.id; out("created", d); });
socket.on("joined", (d) => {
  out("joined", d);
  joins += 1;
  if (joins === 1) socket.emit("offer", { from: myId, to: d.id, room, sdp: "v=0 sio-offer" });
  else { socket.close(); out("closed", {}); setTimeout(() => process.exit(0), 200); }
});
socket.on("answer", (d) => {
  out("answer", d);
  socket.emit("candidate", {
    from: myId, to: d.from, room,
    candidate: { sdpMid: "0", sdpMLineIndex: 0, sdp: "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host" },
  });
});
socket.on("offer", (d) => out("offer", d));
socket.on("candidate", (d) => out("candidate", d));
socket.on("exit", (d) => out("exit", d));
socket.on("signal_error", (d) => out("signal_error", d));
socket.on("connect_error", (e) => { out("connect_error", String(e)); process.exit(2); });
setTimeout(() => { out("timeout", {}); process.exit(3); }, 20000);
