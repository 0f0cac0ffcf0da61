// Glass-to-glass latency of gopbus's WebRTC in headless Chromium. The
// publisher (the bench) paints the wall clock into every frame as a row of
// 32 black/white blocks (ms since the epoch, mod 2^32, most significant bit
// first, each block 20x40 px at the top of a 640x360 frame). The page reads
// the blocks of every frame the video element presents
// (requestVideoFrameCallback) and subtracts the stamp from Date.now().
//
//   node g2g_webrtc.mjs PAGE_URL SECONDS
// prints {"latencies":[[wall ms, latency ms], …], "unreadable": n, "errors": […]}
import { launch } from './browser.mjs';

const [pageUrl, seconds] = process.argv.slice(2);
const browser = await launch();
const result = { errors: [] };
try {
  const page = await browser.newPage();
  page.on('pageerror', (e) => result.errors.push(String(e)));
  await page.goto(pageUrl);
  await page.evaluate(() => {
    window.g2g = { latencies: [], unreadable: 0 };
    const v = document.querySelector('video');
    const canvas = document.createElement('canvas');
    canvas.width = 640; canvas.height = 40;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const onFrame = () => {
      const now = Date.now();
      if (v.videoWidth === 640) {
        ctx.drawImage(v, 0, 0, 640, 40, 0, 0, 640, 40);
        const px = ctx.getImageData(0, 0, 640, 40).data;
        let stamp = 0;
        let clear = true;
        for (let i = 0; i < 32; i++) {
          const o = (20 * 4 * 640) + (i * 20 + 10) * 4; // row 20, block centre
          const y = px[o];
          if (y > 64 && y < 192) clear = false;
          stamp = stamp * 2 + (y >= 128 ? 1 : 0);
        }
        const low = now % 4294967296;
        let d = low - stamp;
        if (d < 0) d += 4294967296;
        if (clear && d < 10000) window.g2g.latencies.push([now, d]); else window.g2g.unreadable++;
      }
      v.requestVideoFrameCallback(onFrame);
    };
    v.requestVideoFrameCallback(onFrame);
  });
  await page.waitForTimeout(Number(seconds) * 1000);
  Object.assign(result, await page.evaluate(() => window.g2g));
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
