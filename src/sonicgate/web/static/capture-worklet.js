// Runs on the audio thread: turns the microphone into 16 kHz mono pcm16
// chunks of 40 ms for the page, each with the RMS level of its 10 ms frames
// (for the level meter and for timing the end of speech).
//
// The page asks for a 16 kHz AudioContext, so in Chromium the browser has
// resampled already; where the context runs at the device's rate instead
// (Firefox), the resampler's low-pass keeps 8-24 kHz content from aliasing
// into the band Whisper hears.
import { Resampler } from "./resampler.js";

const TARGET_RATE = 16000;
// 40 ms: the last words of a turn wait at most that long here. 25 messages a
// second leave half the server's default limit (50/s) for everything else;
// 20 ms chunks would use all of it.
const CHUNK_SAMPLES = 640;
const FRAME_SAMPLES = 160; // 10 ms

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = sampleRate === TARGET_RATE ? null : new Resampler(sampleRate, TARGET_RATE);
    this.add = (sample) => this.push(sample);
    this.mono = new Float32Array(128);
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.levels = new Float32Array(CHUNK_SAMPLES / FRAME_SAMPLES);
    this.filled = 0;
    this.energy = 0; // of the current frame
    this.port.onmessage = (event) => {
      if (event.data !== "flush") return;
      this.flush();
      this.port.postMessage("flushed");
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels.length === 0) return true; // no microphone connected
    let mono = channels[0];
    if (channels.length > 1) {
      if (this.mono.length !== mono.length) this.mono = new Float32Array(mono.length);
      mono = this.mono;
      for (let i = 0; i < mono.length; i++) {
        let sum = 0;
        for (const channel of channels) sum += channel[i];
        mono[i] = sum / channels.length;
      }
    }
    if (this.resampler) this.resampler.push(mono, this.add);
    else for (const sample of mono) this.push(sample);
    return true;
  }

  push(sample) {
    const clamped = Math.max(-1, Math.min(1, sample));
    this.energy += clamped * clamped;
    this.chunk[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled % FRAME_SAMPLES === 0) this.endFrame(FRAME_SAMPLES);
    if (this.filled === CHUNK_SAMPLES) this.flush();
  }

  endFrame(length) {
    this.levels[Math.ceil(this.filled / FRAME_SAMPLES) - 1] = Math.sqrt(this.energy / length);
    this.energy = 0;
  }

  flush() {
    if (this.filled === 0) return;
    const partial = this.filled % FRAME_SAMPLES;
    if (partial > 0) this.endFrame(partial);
    const frames = Math.ceil(this.filled / FRAME_SAMPLES);
    const pcm = this.filled === CHUNK_SAMPLES ? this.chunk : this.chunk.slice(0, this.filled);
    const levels = this.levels.slice(0, frames);
    this.port.postMessage({ pcm: pcm.buffer, levels }, [pcm.buffer, levels.buffer]);
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
  }
}

registerProcessor("capture", CaptureProcessor);
