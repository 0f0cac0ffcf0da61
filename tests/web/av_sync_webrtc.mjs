// Audio/video sync of gopbus's WebRTC in headless Chromium. The stream
// flashes white for the first 100 ms of every second and beeps (1 kHz) at
// the same moments. The page notes when a flash is presented
// (requestVideoFrameCallback) and when a beep starts (a WebAudio analyser on
// the received audio track, polled every 2 ms), on one clock.
//
//   node av_sync_webrtc.mjs PAGE_URL SECONDS
// prints {"flashes":[ms…], "beeps":[ms…], "outputLatency": s, "errors":[…]}
import { launch } from './browser.mjs';

const [pageUrl, seconds] = process.argv.slice(2);
const browser = await launch();
const result = { errors: [] };
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => result.errors.push(String(e)));
  await page.goto(pageUrl);
  await page.waitForFunction(() => {
    const v = document.querySelector('video');
    return v.srcObject && v.srcObject.getAudioTracks().length > 0 && v.videoWidth > 0;
  }, null, { timeout: 20000 });
  await page.evaluate(async () => {
    const v = document.querySelector('video');
    v.muted = false;
    window.sync = { flashes: [], beeps: [] };
    const canvas = document.createElement('canvas');
    canvas.width = 16; canvas.height = 9;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    let bright = false;
    const onFrame = () => {
      const now = performance.now();
      ctx.drawImage(v, 0, 0, 16, 9);
      const px = ctx.getImageData(0, 0, 16, 9).data;
      let sum = 0;
      for (let i = 0; i < px.length; i += 4) sum += px[i];
      const b = sum / (px.length / 4) > 128;
      if (b && !bright) window.sync.flashes.push(now);
      bright = b;
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
    const ac = new AudioContext();
    await ac.resume();
    const src = ac.createMediaStreamSource(new MediaStream(v.srcObject.getAudioTracks()));
    const an = ac.createAnalyser();
    an.fftSize = 256;
    src.connect(an);
    window.sync.outputLatency = (ac.baseLatency || 0) + (ac.outputLatency || 0);
    const buf = new Float32Array(an.fftSize);
    let loud = false;
    setInterval(() => {
      an.getFloatTimeDomainData(buf);
      let e = 0;
      for (const s of buf) e += s * s;
      const l = Math.sqrt(e / buf.length) > 0.05;
      if (l && !loud) window.sync.beeps.push(performance.now());
      loud = l;
    }, 2);
  });
  await page.waitForTimeout(Number(seconds) * 1000);
  Object.assign(result, await page.evaluate(() => window.sync));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
