// Microphone in, speech out: the two ends of the browser's audio.

/** Level of a pcm16 chunk in dBFS (RMS); -Infinity for digital silence. */
export function levelDb(samples) {
  let energy = 0;
  for (const sample of samples) energy += sample * sample;
  return 10 * Math.log10(energy / Math.max(1, samples.length) / 32768 ** 2);
}

/** Captures the microphone as 16 kHz mono pcm16 chunks, handed to `onChunk`. */
export class Microphone {
  constructor(context, stream, node, source) {
    this.context = context;
    this.stream = stream;
    this.node = node;
    this.source = source;
  }

  static async open(context, onChunk) {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new MicrophoneError(
        "This page can use the microphone only over HTTPS or from localhost.",
      );
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
      });
    } catch (error) {
      throw MicrophoneError.from(error);
    }
    await context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    const source = context.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(context, "capture");
    node.port.onmessage = (event) => onChunk(new Int16Array(event.data));
    // A node nobody listens to may not be pulled: route it to a muted output.
    const mute = context.createGain();
    mute.gain.value = 0;
    source.connect(node).connect(mute).connect(context.destination);
    return new Microphone(context, stream, node, source);
  }

  close() {
    this.node.port.postMessage("flush");
    this.source.disconnect();
    for (const track of this.stream.getTracks()) track.stop();
  }
}

export class MicrophoneError extends Error {
  static from(error) {
    const reasons = {
      NotAllowedError:
        "Microphone access was denied. Allow it in the site settings to talk, or type below.",
      NotFoundError: "No microphone was found. Plug one in, or type below.",
      NotReadableError: "The microphone is in use by another program.",
    };
    return new MicrophoneError(reasons[error.name] ?? `The microphone failed: ${error.message}`);
  }
}

/**
 * Plays pcm16 chunks back to back as they arrive: each is scheduled at the
 * end of the one before, so there is no gap between chunks, and `stop()`
 * silences everything scheduled at once (barge-in, or the stop button).
 */
export class Player {
  // Headroom for the first chunk of a reply, so its start is not clipped.
  static LEAD_SECONDS = 0.05;

  constructor(context) {
    this.context = context;
    this.analyser = context.createAnalyser();
    this.analyser.connect(context.destination);
    this.sources = new Set();
    this.playhead = 0;
    this.chunksPlayed = 0;
    this.peak = 0; // loudest sample heard by the analyser, 0..1
    this.samples = new Float32Array(this.analyser.fftSize);
    setInterval(() => this.listen(), 50);
  }

  get playing() {
    return this.sources.size > 0;
  }

  play(pcm16, sampleRate) {
    const samples = new Int16Array(pcm16);
    if (samples.length === 0) return;
    const buffer = this.context.createBuffer(1, samples.length, sampleRate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.analyser);
    const start = Math.max(this.playhead, this.context.currentTime + Player.LEAD_SECONDS);
    source.start(start);
    this.playhead = start + buffer.duration;
    this.sources.add(source);
    source.onended = () => {
      if (this.sources.delete(source)) this.chunksPlayed += 1;
    };
  }

  stop() {
    const stopped = this.sources.size;
    const sources = [...this.sources];
    this.sources.clear(); // first, so their `ended` does not count as played
    for (const source of sources) source.stop();
    this.playhead = 0;
    return stopped;
  }

  listen() {
    if (!this.playing) return;
    this.analyser.getFloatTimeDomainData(this.samples);
    for (const sample of this.samples) this.peak = Math.max(this.peak, Math.abs(sample));
  }
}
