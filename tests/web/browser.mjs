// Headless Chromium as every browser test and benchmark starts it: Debian's
// chromium through playwright-core, nothing allowed to leave loopback, and
// no mDNS host candidates (the server sees the browser's loopback address).
import { chromium } from 'playwright-core';

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--autoplay-policy=no-user-gesture-required', '--disable-gpu', '--disable-quic',
           '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
           '--disable-features=WebRtcHideLocalIpsWithMdns'],
  });
}
