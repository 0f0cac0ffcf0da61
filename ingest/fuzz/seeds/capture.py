#!/usr/bin/env python3
"""Makes the fuzz seed corpus from real RTMP sessions.

Runs a recording TCP proxy in front of a running `gopbus serve`, publishes
through it with ffmpeg (H.264 High with B-frames and AAC 48 kHz, FMLE-style
releaseStream/FCPublish as ffmpeg and OBS send them) and plays through it
with ffmpeg, keeps what the clients sent, and cuts it into seeds for each
fuzz target (`seeds/<target>/`). The seeds are checked in; rerun this only to
refresh them:

    python3 ingest/fuzz/seeds/capture.py RTMP_PORT STREAM_KEY STREAM_NAME

`cargo run -p gopbus-proto --example wire_seeds` makes the `wire` seeds from
the `records` seeds this writes.
"""

import os
import socket
import struct
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
HANDSHAKE = 1 + 1536 + 1536  # C0, C1, C2
# Seeds stay small: fuzzing speed falls with input length.
SESSION_MAX = 48 * 1024


def proxy(upstream_port):
    """Listens on a free loopback port; returns (port, recordings, threads)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    recordings = []

    def pump(src, dst, record):
        while True:
            try:
                b = src.recv(65536)
            except OSError:
                b = b""
            if not b:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if record is not None:
                record.extend(b)
            try:
                dst.sendall(b)
            except OSError:
                return

    def accept():
        while True:
            try:
                client, _ = lsock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", upstream_port))
            rec = bytearray()
            recordings.append(rec)
            threading.Thread(target=pump, args=(client, server, rec), daemon=True).start()
            threading.Thread(target=pump, args=(server, client, None), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return lsock.getsockname()[1], recordings, lsock


def messages(stream):
    """Client-to-server RTMP messages after the handshake: (type, timestamp, body)."""
    chunk_size, pos, prev, partial, out = 128, 0, {}, {}, []
    b = bytes(stream)
    while pos < len(b):
        start = pos
        fmt, csid = b[pos] >> 6, b[pos] & 0x3F
        pos += 1
        if csid == 0:
            csid, pos = 64 + b[pos], pos + 1
        elif csid == 1:
            csid, pos = 64 + b[pos] + 256 * b[pos + 1], pos + 2
        st = dict(prev.get(csid, {}))
        if fmt <= 2:
            ts = int.from_bytes(b[pos:pos + 3], "big")
            pos += 3
        if fmt <= 1:
            st["len"] = int.from_bytes(b[pos:pos + 3], "big")
            st["type"] = b[pos + 3]
            pos += 4
        if fmt == 0:
            st["sid"] = struct.unpack("<I", b[pos:pos + 4])[0]
            pos += 4
        if fmt <= 2:
            st["ext"] = ts == 0xFFFFFF
            if st["ext"]:
                ts = int.from_bytes(b[pos:pos + 4], "big")
                pos += 4
            st["ts"] = ts if fmt == 0 else st.get("ts", 0) + ts
            st["delta"] = ts
        elif st.get("ext"):
            pos += 4
        body = partial.get(csid, b"")
        if fmt == 3 and not body:
            st["ts"] = st.get("ts", 0) + (st.get("delta", 0) if st.get("seen") else 0)
        st["seen"] = True
        take = min(chunk_size, st["len"] - len(body))
        if pos + take > len(b):
            return out  # the capture ends mid-chunk
        body += b[pos:pos + take]
        pos += take
        if len(body) == st["len"]:
            out.append((st["type"], st["ts"], body))
            partial[csid] = b""
            if st["type"] == 1:
                chunk_size = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
        else:
            partial[csid] = body
        prev[csid] = st
        assert pos > start
    return out


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    port, key, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    pport, recordings, lsock = proxy(port)
    url = f"rtmp://127.0.0.1:{pport}/live"
    # Publish: OBS's defaults as far as ffmpeg goes (High, 3 B-frames, AAC 48 kHz).
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "3",
         "-c:v", "libx264", "-profile:v", "high", "-bf", "3", "-g", "120", "-b:v", "800k",
         "-c:a", "aac", "-ar", "48000", "-ac", "2", "-f", "flv", f"{url}/{key}"],
        check=True,
    )
    publish = bytes(recordings[0])
    # Play: while a second publish runs, so the player gets media.
    pub = subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
         "-t", "6", "-c:v", "libx264", "-g", "30", "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{key}"])
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", f"{url}/{name}", "-t", "2", "-f", "null", "-"], check=True)
    pub.wait()
    play = bytes(recordings[1])
    lsock.close()

    write("handshake", "ffmpeg-publish", bytes([255]) + publish[:HANDSHAKE + 512])
    write("handshake", "ffmpeg-play", bytes([7]) + play[:HANDSHAKE])
    session = publish[HANDSHAKE:HANDSHAKE + SESSION_MAX]
    for step in (1, 100, 255):
        write("session", f"ffmpeg-publish-split{step}", bytes([step]) + session)
        write("chunks", f"ffmpeg-publish-split{step}", bytes([step]) + session)
    write("session", "ffmpeg-play", bytes([64]) + play[HANDSHAKE:HANDSHAKE + SESSION_MAX])
    write("chunks", "ffmpeg-play", bytes([64]) + play[HANDSHAKE:HANDSHAKE + SESSION_MAX])

    msgs = messages(publish[HANDSHAKE:])
    for i, (t, ts, body) in enumerate(msgs):
        if t in (18, 20) and len(body) < 4096:
            write("amf", f"ffmpeg-{i:03}-type{t}", body)
    video = [m for m in msgs if m[0] == 9]
    audio = [m for m in msgs if m[0] == 8]
    write("records", "avcc", video[0][2][5:])  # AVC sequence header: the avcC record
    write("records", "asc", audio[0][2][2:])  # AAC sequence header: the AudioSpecificConfig
    write("records", "video-tag-keyframe", video[1][2][:2048])
    write("records", "video-tag-inter", video[2][2][:2048])
    write("records", "keyframe-avcc-nalus", video[1][2][5:4096])
    write("records", "audio-tag", audio[1][2])
    media = bytearray()
    for t, ts, body in msgs:
        if t in (8, 9) and len(media) < 60000:
            body = body[:4096]
            media += bytes([1 if t == 8 else 0]) + ts.to_bytes(3, "big") + len(body).to_bytes(2, "big") + body
    write("media", "ffmpeg-publish", bytes(media))
    print(f"publish: {len(publish)} bytes, {len(msgs)} messages; play: {len(play)} bytes")


if __name__ == "__main__":
    main()
