"""Speech for the dictation sentences, synthesised with espeak-ng at 16 kHz (deterministic).

espeak-ng (``apt-get install espeak-ng``; ``tools/system-deps.sh`` installs it) speaks
each sentence with a fixed voice and speed; its 22,050 Hz output is resampled to Whisper's
16 kHz (polyphase, 320/441) and scaled to float32 in [-1, 1]. The same text, voice, speed
and espeak-ng release give the same samples.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

SAMPLING_RATE = 16000
# (voice, words per minute): two accents, a female variant, two speeds
VOICES = (("en-us", 165), ("en-gb", 150), ("en-us+f3", 180), ("en-gb+m3", 175))


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise RuntimeError(
            "error: espeak-ng is not installed (it synthesises the dictation speech); "
            "install it with: apt-get install espeak-ng"
        )
    return path


def version() -> str:
    return subprocess.run([espeak(), "--version"], capture_output=True, text=True).stdout.strip()


def synthesise(text: str, voice: str = "en-us", speed: int = 165) -> np.ndarray:
    """``text`` spoken by espeak-ng: float32 samples at 16 kHz."""
    from scipy.signal import resample_poly

    proc = subprocess.run(
        [espeak(), "-v", voice, "-s", str(speed), "--stdout", text],
        capture_output=True,
        check=True,
    )
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate = w.getframerate()
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    samples = raw.astype(np.float32) / 32768.0
    if rate != SAMPLING_RATE:
        g = np.gcd(rate, SAMPLING_RATE)
        samples = resample_poly(samples, SAMPLING_RATE // g, rate // g).astype(np.float32)
    return np.clip(samples, -1.0, 1.0)
