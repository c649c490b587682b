// Counters for the page's own cost, and a frame sampler the browser tests read through
// `window.telehub.perf` (Runtime.evaluate): how long our message handling and drawing
// take, and how regular the animation frames are while data streams in.

export const perf = {
  msgs: 0,
  msgMs: 0,
  draws: 0,
  drawMs: 0,
  drawFrames: 0,
  deferred: 0,
  segments: 0,
  longTasks: 0,
  longTaskMs: 0,
  /** The charts' current redraw period (the governor in chart.js). */
  redrawMs: 0,

  noteMessage(ms) { this.msgs += 1; this.msgMs += ms; },
  noteDraw(ms, charts) { this.drawFrames += 1; this.draws += charts; this.drawMs += ms; },
  noteDeferred(n) { this.deferred += n; },
  noteSegments(n) { this.segments += n; },

  snapshot() {
    const { msgs, msgMs, draws, drawMs, drawFrames, deferred, segments, longTasks, longTaskMs } = this;
    return { msgs, msgMs, draws, drawMs, drawFrames, deferred, segments, longTasks, longTaskMs };
  },

  /**
   * Samples animation frames for `ms` milliseconds and resolves with the frame-interval
   * statistics and the page's own work over the same period.
   */
  sampleFrames(ms = 10000) {
    return new Promise((resolve) => {
      const before = this.snapshot();
      const intervals = [];
      const t0 = performance.now();
      let last = t0;
      const tick = (now) => {
        intervals.push(now - last);
        last = now;
        if (now - t0 < ms) { requestAnimationFrame(tick); return; }
        const after = this.snapshot();
        const d = {};
        for (const k of Object.keys(after)) d[k] = after[k] - before[k];
        const sorted = intervals.slice(1).sort((a, b) => a - b);
        const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] || 0;
        const elapsed = now - t0;
        // The display's frame period is the fastest interval seen; a frame that took
        // longer than 1.5 periods dropped (interval / period - 1) frames.
        const period = Math.max(1000 / 240, sorted[Math.floor(sorted.length * 0.05)] || 16.7);
        let dropped = 0;
        for (const v of sorted) if (v > period * 1.5) dropped += Math.round(v / period) - 1;
        resolve({
          seconds: elapsed / 1000,
          frames: sorted.length,
          fps: sorted.length / (elapsed / 1000),
          frameMsP50: pct(0.5),
          frameMsP95: pct(0.95),
          frameMsP99: pct(0.99),
          frameMsMax: sorted[sorted.length - 1] || 0,
          // Frames that took longer than 50 ms (the "long frames" of a trace).
          longFrames: sorted.filter((v) => v > 50).length,
          periodMs: period,
          dropped,
          messages: d.msgs,
          messagesPerSec: d.msgs / (elapsed / 1000),
          messageMsPerSec: d.msgMs / (elapsed / 1000),
          drawMsPerFrame: d.drawFrames ? d.drawMs / d.drawFrames : 0,
          chartDraws: d.draws,
          deferredDraws: d.deferred,
          scriptMsPerFrame: (d.msgMs + d.drawMs) / Math.max(1, sorted.length),
          longTasks: d.longTasks,
          longTaskMs: d.longTaskMs,
          chartRedrawMs: this.redrawMs,
        });
      };
      requestAnimationFrame(tick);
    });
  },
};

try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) { perf.longTasks += 1; perf.longTaskMs += e.duration; }
  }).observe({ type: "longtask", buffered: false });
} catch (_) { /* longtask timing is Chromium-only */ }
