// The minimal socket.io 2.x room server WebRTC tutorials use, as the
// baseline `scripts/bench-signal` measures natkit against. Usage:
//   node tutorial_server.js PORT
"use strict";
const http = require("http");
const io = require("socket.io");
const port = Number(process.argv[2]);
const server = http.createServer();
const sio = io(server, { serveClient: false });
sio.on("connection", (socket) => {
  let room = null;
  socket.on("createAndJoinRoom", (d) => {
    room = String(d.room);
    const members = sio.sockets.adapter.rooms[room];
    const peers = members ? Object.keys(members.sockets).map((id) => ({ id })) : [];
    socket.join(room);
    socket.emit("created", { id: socket.id, room, peers });
    socket.to(room).emit("joined", { id: socket.id, room });
  });
  for (const ev of ["offer", "answer", "candidate"]) {
    socket.on(ev, (d) => { d.from = socket.id; sio.to(d.to).emit(ev, d); });
  }
  socket.on("disconnect", () => { if (room) socket.to(room).emit("exit", { from: socket.id, room }); });
});
server.listen(port, "127.0.0.1", () => process.stdout.write("listening\n"));
