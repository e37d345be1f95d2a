// A LoRaWAN network server forwards JSON uplinks:
//   {"devEUI":"...","deviceProfile":"...","fPort":2,"time":"2024-...Z","rxInfo":[{"rssi":..,"snr":..}],"data":"<base64>"}
// The base64 `data` holds the sensor frame:
//   byte 0      battery, percent
//   bytes 1-2   temperature, signed big-endian, 0.01 degC
//   byte 3      humidity, 0.5 %RH
//   bytes 4-5   CO2, unsigned big-endian, ppm
//   byte 6      flags: bit0 door open, bit1 motion
// Uses the browser-style atob (Latin-1 string) and reads it byte by byte.

var msg = decodeToJson(payload);
var raw = atob(msg.data);
var bytes = [];
for (var i = 0; i < raw.length; i++) {
    bytes.push(raw.charCodeAt(i) & 0xFF);
}

function int16be(b, offset) {
    var v = (b[offset] << 8) | b[offset + 1];
    return v > 0x7FFF ? v - 0x10000 : v;
}

var ts = Date.parse(msg.time);
var values = {
    battery: bytes[0],
    temperature: int16be(bytes, 1) / 100,
    humidity: bytes[3] / 2,
    co2: (bytes[4] << 8) | bytes[5],
    doorOpen: (bytes[6] & 0x01) === 0x01,
    motion: (bytes[6] & 0x02) === 0x02
};

return {
    deviceName: msg.devEUI,
    deviceType: msg.deviceProfile,
    attributes: {
        fPort: msg.fPort,
        integration: metadata.integrationName
    },
    telemetry: [
        { ts: ts, values: values },
        { ts: ts, values: { rssi: msg.rxInfo[0].rssi, snr: msg.rxInfo[0].snr } }
    ]
};
