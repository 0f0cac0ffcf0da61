// Opens a gopbus watch page (WebRTC) in headless Chromium and prints, as
// JSON, what the viewer got every half second: the page's state, the
// picture's size, decoded frames, freezes, and the audio track's codec and
// level (from RTCPeerConnection.getStats()).
//
//   node watch_webrtc.mjs PAGE_URL SECONDS
import { launch } from './browser.mjs';

const [pageUrl, seconds] = process.argv.slice(2);
const browser = await launch();
const result = { errors: [], samples: [] };
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => result.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') result.errors.push(m.text()); });
  await page.goto(pageUrl);
  // Played, not only received: Chromium measures the level of audio it plays out.
  await page.evaluate(() => { document.querySelector('video').muted = false; });
  const until = Date.now() + Number(seconds) * 1000;
  while (Date.now() < until) {
    await page.waitForTimeout(500);
    result.samples.push(await page.evaluate(async () => {
      const v = document.querySelector('video');
      const g = window.gopbus || {};
      const s = { t: Date.now(), state: g.state, message: (g.status || {}).message || null, pageErrors: g.errors || [],
                  width: v.videoWidth, height: v.videoHeight, time: v.currentTime };
      if (g.pc) {
        const codecs = {};
        const stats = await g.pc.getStats();
        stats.forEach((r) => { if (r.type === 'codec') codecs[r.id] = r.mimeType; });
        stats.forEach((r) => {
          if (r.type !== 'inbound-rtp') return;
          if (r.kind === 'video') {
            Object.assign(s, { framesDecoded: r.framesDecoded, framesDropped: r.framesDropped, freezeCount: r.freezeCount,
                               freezeSeconds: r.totalFreezesDuration, videoCodec: codecs[r.codecId] || null,
                               videoPackets: r.packetsReceived, videoLost: r.packetsLost, jitterBufferDelay: r.jitterBufferDelay,
                               jitterBufferEmitted: r.jitterBufferEmittedCount });
          } else if (r.kind === 'audio') {
            Object.assign(s, { audioCodec: codecs[r.codecId] || null, audioLevel: r.audioLevel,
                               audioEnergy: r.totalAudioEnergy, audioSamples: r.totalSamplesReceived,
                               concealed: r.concealedSamples, audioPackets: r.packetsReceived });
          }
        });
        s.connection = g.pc.connectionState;
      }
      return s;
    }));
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
