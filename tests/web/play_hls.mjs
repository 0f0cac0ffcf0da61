// Plays an HLS URL with hls.js in headless Chromium, from a page on another
// origin, and prints what happened as JSON: playback time, decoded frames,
// the requests the player made, errors.
//
//   node play_hls.mjs PAGE_URL SECONDS
//
// The page (served by the test) loads hls.js and plays the stream it names.
import { launch } from './browser.mjs';

const [pageUrl, seconds] = process.argv.slice(2);
const browser = await launch();
const result = { requests: [], errors: [], samples: [] };
try {
  const page = await browser.newPage();
  page.on('request', (r) => result.requests.push(r.url()));
  page.on('pageerror', (e) => result.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') result.errors.push(m.text()); });
  await page.goto(pageUrl);
  const until = Date.now() + Number(seconds) * 1000;
  while (Date.now() < until) {
    await page.waitForTimeout(500);
    result.samples.push(await page.evaluate(() => {
      const v = document.querySelector('video');
      const q = v.getVideoPlaybackQuality();
      const h = window.hls;
      const date = h && h.playingDate;
      return { time: v.currentTime, frames: q.totalVideoFrames, width: v.videoWidth, height: v.videoHeight,
               hlsErrors: window.hlsErrors || [], latency: h ? h.latency : null,
               targetLatency: h ? h.targetLatency : null,
               audioTrack: h && h.audioTracks[h.audioTrack] ? h.audioTracks[h.audioTrack].name : null,
               audioTracks: h ? h.audioTracks.map((t) => t.name) : [],
               allAudioTracks: h ? h.allAudioTracks.map((t) => `${t.groupId}:${t.name}`) : [],
               levels: h ? h.levels.map((l) => `${l.url}|${l.audioCodec}|${l.audioGroups}`) : [],
               audioBytes: v.webkitAudioDecodedByteCount || 0,
               buffered: v.buffered.length ? v.buffered.end(v.buffered.length - 1) - v.currentTime : 0,
               behindMs: date ? Date.now() - date.getTime() : null };
    }));
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
