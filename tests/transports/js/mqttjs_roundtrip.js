// MQTT.js over WebSocket against the broker: connect, subscribe, publish and
// receive at QoS 1. Run by tests/transports/test_mqttjs.py:
//   node mqttjs_roundtrip.js ws://127.0.0.1:PORT/mqtt
// Prints one JSON line with what arrived; exits non-zero on any error.
"use strict";

const mqtt = require("mqtt");

const url = process.argv[2];
const protocolVersion = Number(process.argv[3] || 5);
const client = mqtt.connect(url, {
  protocolVersion,
  clientId: "mqttjs-" + process.pid,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
const timer = setTimeout(() => fail(new Error("timed out")), 8000);

function fail(err) {
  console.error(String(err && err.stack ? err.stack : err));
  process.exit(1);
}

client.on("error", fail);
client.on("connect", () => {
  client.subscribe("js/t", { qos: 1 }, (err, granted) => {
    if (err) return fail(err);
    client.publish("js/t", Buffer.from("from mqtt.js"), { qos: 1 }, (err2) => {
      if (err2) fail(err2);
    });
  });
});
client.on("message", (topic, payload, packet) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ topic, payload: payload.toString(), qos: packet.qos }));
  client.end(false, () => process.exit(0));
});
