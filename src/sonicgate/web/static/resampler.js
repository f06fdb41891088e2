// A streaming resampler between any two integer rates: a Blackman-windowed
// sinc low-pass evaluated at each output instant (polyphase: one kernel per
// fractional offset, computed once). It passes up to 0.4 of the lower rate and
// stops (75 dB down or more) from its half on, so nothing aliases into the band:
// at 16 kHz out, flat to 6.4 kHz and nothing from above 8 kHz folds back.

const PASS = 0.4; // passband edge, as a fraction of the lower rate
const STOP = 0.5; // stopband edge: the lower rate's Nyquist
const BLACKMAN_WIDTH = 5.5; // transition width of a Blackman window, in 1/length

export class Resampler {
  constructor(inputRate, outputRate) {
    const divisor = gcd(inputRate, outputRate);
    this.step = inputRate / divisor; // input samples per `phases` output samples
    this.phases = outputRate / divisor;
    const lower = Math.min(inputRate, outputRate);
    const cutoff = ((PASS + STOP) / 2) * lower;
    const transition = (STOP - PASS) * lower;
    this.half = Math.ceil((BLACKMAN_WIDTH / transition / 2) * inputRate); // taps each side
    this.kernels = [];
    for (let phase = 0; phase < this.phases; phase++) {
      this.kernels.push(kernel(phase / this.phases, this.half, cutoff / inputRate));
    }
    this.buffer = new Float32Array(4 * this.half + 1024);
    this.filled = this.half; // zeros before the first sample
    this.center = this.half; // the input sample the next output is taken at...
    this.phase = 0; // ...plus phase / phases of a sample
  }

  /** Takes input samples (any number) and calls `emit` with each output sample due. */
  push(input, emit) {
    if (this.filled + input.length > this.buffer.length) {
      const grown = new Float32Array(2 * (this.filled + input.length));
      grown.set(this.buffer.subarray(0, this.filled));
      this.buffer = grown;
    }
    this.buffer.set(input, this.filled);
    this.filled += input.length;
    const buffer = this.buffer;
    while (this.center + this.half < this.filled) {
      const taps = this.kernels[this.phase];
      const start = this.center - this.half;
      let sum = 0;
      for (let i = 0; i < taps.length; i++) sum += buffer[start + i] * taps[i];
      emit(sum);
      this.phase += this.step;
      this.center += Math.floor(this.phase / this.phases);
      this.phase %= this.phases;
    }
    // Keep only what the next outputs still reach back to.
    const drop = this.center - this.half;
    buffer.copyWithin(0, drop, this.filled);
    this.filled -= drop;
    this.center -= drop;
  }
}

/** Taps for an output `offset` (0..1) input samples past the centre tap. */
function kernel(offset, half, cutoff) {
  const taps = new Float32Array(2 * half + 1);
  let sum = 0;
  for (let i = 0; i < taps.length; i++) {
    const t = i - half - offset; // in input samples
    const x = 2 * cutoff * t;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = t / (half + 1); // within (-1, 1)
    const blackman = 0.42 + 0.5 * Math.cos(Math.PI * w) + 0.08 * Math.cos(2 * Math.PI * w);
    taps[i] = sinc * blackman;
    sum += taps[i];
  }
  for (let i = 0; i < taps.length; i++) taps[i] /= sum; // unity gain at DC
  return taps;
}

function gcd(a, b) {
  return b === 0 ? a : gcd(b, a % b);
}
