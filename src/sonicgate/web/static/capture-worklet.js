// Runs on the audio thread. Browsers capture at 44.1 or 48 kHz whatever rate
// is asked for (Firefox ignores the request), so the page resamples here:
// each 16 kHz output sample is the mean of the input samples since the last
// one (a box filter: cheap, and enough against aliasing for speech), and
// every 4096 of them go to the page as one pcm16 chunk (the second seed's size).

const TARGET_RATE = 16000;
const CHUNK_SAMPLES = 4096;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.phase = 0;
    this.sum = 0;
    this.count = 0;
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") this.flush();
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const first = channels[0];
      for (let i = 0; i < first.length; i++) {
        let sample = 0;
        for (const channel of channels) sample += channel[i];
        this.sum += sample / channels.length;
        this.count += 1;
        this.phase += 1;
        if (this.phase >= this.step) {
          this.phase -= this.step;
          this.push(this.sum / this.count);
          this.sum = 0;
          this.count = 0;
        }
      }
    }
    return true;
  }

  push(sample) {
    const clamped = Math.max(-1, Math.min(1, sample));
    this.chunk[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === CHUNK_SAMPLES) this.flush();
  }

  flush() {
    if (this.filled === 0) return;
    const full = this.filled === CHUNK_SAMPLES ? this.chunk : this.chunk.slice(0, this.filled);
    this.port.postMessage(full.buffer, [full.buffer]);
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
  }
}

registerProcessor("capture", CaptureProcessor);
