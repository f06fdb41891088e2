// Microphone in, speech out: the two ends of the browser's audio, each on an
// AudioContext of its own at the rate its audio has, so neither is resampled
// by a cheap interpolator on the way.

const CAPTURE_RATE = 16000; // what the server hears

/**
 * The microphone as 16 kHz mono pcm16 chunks of 40 ms, handed to
 * `onChunk(pcm, levels)` with the RMS level (0..1) of each 10 ms frame.
 * One AudioContext and one worklet node serve every start: a stop releases the
 * device (its tracks stopped) and suspends the context, nothing piles up.
 */
export class Microphone {
  constructor(onChunk) {
    this.onChunk = onChunk;
    this.context = null;
    this.node = null;
    this.stream = null;
    this.source = null;
    this.flushed = null; // resolves when the worklet has sent its last samples
  }

  get live() {
    return this.stream !== null;
  }

  get rate() {
    return this.context?.sampleRate ?? null;
  }

  async start() {
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
    try {
      this.source = await this.sourceFor(stream);
    } catch (error) {
      for (const track of stream.getTracks()) track.stop();
      throw new MicrophoneError(`The microphone failed: ${error.message}`);
    }
    this.stream = stream;
    this.source.connect(this.node);
    await this.context.resume();
  }

  async stop() {
    if (!this.live) return;
    this.source.disconnect();
    for (const track of this.stream.getTracks()) track.stop();
    this.source = null;
    this.stream = null;
    // The last words of a partial chunk still go out; then the context sleeps.
    const flushed = new Promise((resolve) => (this.flushed = resolve));
    this.node.port.postMessage("flush");
    await flushed;
    if (!this.live) await this.context.suspend();
  }

  async sourceFor(stream) {
    this.context ??= await this.build(new AudioContext({ sampleRate: CAPTURE_RATE }));
    try {
      return this.context.createMediaStreamSource(stream);
    } catch (error) {
      // Firefox cannot connect a microphone to a context at another rate than
      // the device's: capture at the device's rate, and the worklet resamples.
      if (error.name !== "NotSupportedError" || this.context.sampleRate !== CAPTURE_RATE) {
        throw error;
      }
      await this.context.close();
      this.context = await this.build(new AudioContext());
      return this.context.createMediaStreamSource(stream);
    }
  }

  async build(context) {
    await context.audioWorklet.addModule(new URL("./capture-worklet.js", import.meta.url));
    this.node = new AudioWorkletNode(context, "capture");
    this.node.port.onmessage = ({ data }) => {
      if (data === "flushed") this.flushed?.();
      else this.onChunk(new Int16Array(data.pcm), data.levels);
    };
    // A node nobody listens to may not be pulled: route it to a muted output.
    const mute = context.createGain();
    mute.gain.value = 0;
    this.node.connect(mute).connect(context.destination);
    return context;
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
 * Its context runs at the replies' rate (the browser resamples to the device
 * properly); `onChange(playing)` hears when playback starts and ends.
 */
export class Player {
  // Headroom for the first chunk of a reply, so its start is not clipped.
  static LEAD_SECONDS = 0.05;

  constructor(onChange) {
    this.onChange = onChange;
    this.context = null;
    this.analyser = null;
    this.sources = new Set();
    this.playhead = 0;
    this.chunksPlayed = 0;
    this.peak = 0; // loudest sample heard by the analyser, 0..1
    this.samples = null;
    setInterval(() => this.listen(), 50);
  }

  get playing() {
    return this.sources.size > 0;
  }

  /** Readies a context at `rate`: call it in a click, where browsers allow sound to start. */
  prepare(rate) {
    if (this.context?.sampleRate !== rate) {
      this.stop();
      this.context?.close();
      this.context = new AudioContext({ sampleRate: rate });
      this.analyser = this.context.createAnalyser();
      this.analyser.connect(this.context.destination);
      this.samples = new Float32Array(this.analyser.fftSize);
    }
    if (this.context.state === "suspended") this.context.resume();
  }

  play(pcm16, sampleRate) {
    const samples = new Int16Array(pcm16);
    if (samples.length === 0) return;
    this.prepare(sampleRate);
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
    if (this.sources.size === 1) this.onChange(true);
    source.onended = () => {
      if (!this.sources.delete(source)) return;
      this.chunksPlayed += 1;
      if (!this.playing) this.onChange(false);
    };
  }

  stop() {
    const stopped = this.sources.size;
    const sources = [...this.sources];
    this.sources.clear(); // first, so their `ended` does not count as played
    for (const source of sources) source.stop();
    this.playhead = 0;
    if (stopped > 0) this.onChange(false);
    return stopped;
  }

  listen() {
    if (!this.playing) return;
    this.analyser.getFloatTimeDomainData(this.samples);
    for (const sample of this.samples) this.peak = Math.max(this.peak, Math.abs(sample));
  }
}
