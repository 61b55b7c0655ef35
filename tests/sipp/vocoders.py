"""Codecs from outside the appliance's FFmpeg, for the trunk tests' RTP: G.729 from Belledonne's
bcg729 (Debian `libbcg729-0`) and GSM 06.10 from libgsm (Debian `libgsm1`), through ctypes. The
appliance decodes with FFmpeg; what the tests send and compare against comes from these."""

import ctypes
import ctypes.util

import numpy as np


class Vocoder:
    """A codec of 8 kHz speech: float samples (full scale 1.0) to 20 ms RTP payloads and back."""

    name: str
    payload_type: int

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """20 ms payloads of `samples` (the last part shorter than 20 ms left out)."""
        pcm = (np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2")
        return [self._encode(np.ascontiguousarray(pcm[at:at + 160])) for at in range(0, len(pcm) - 159, 160)]

    def decode(self, payloads: list[bytes]) -> np.ndarray:
        """The audio of 20 ms payloads, in order, as float samples."""
        return np.concatenate([self._decode(payload) for payload in payloads]) / 32768.0

    def _encode(self, pcm: np.ndarray) -> bytes:
        raise NotImplementedError

    def _decode(self, payload: bytes) -> np.ndarray:
        raise NotImplementedError


def _library(name: str, soname: str) -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library(name) or soname)


class G729(Vocoder):
    """bcg729 (ITU-T G.729 Annex A; Annex B's silence frames off): two 10 ms frames a packet."""

    name, payload_type = "G729", 18

    def __init__(self):
        self.lib = lib = _library("bcg729", "libbcg729.so.0")
        lib.initBcg729EncoderChannel.restype = lib.initBcg729DecoderChannel.restype = ctypes.c_void_p
        lib.initBcg729EncoderChannel.argtypes = [ctypes.c_uint8]
        lib.bcg729Encoder.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.bcg729Decoder.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint8,
                                      ctypes.c_uint8, ctypes.c_uint8, ctypes.c_void_p]
        self.encoder = lib.initBcg729EncoderChannel(0)
        self.decoder = lib.initBcg729DecoderChannel()

    def _encode(self, pcm: np.ndarray) -> bytes:
        out = b""
        for half in (pcm[:80], pcm[80:]):
            frame, length = (ctypes.c_uint8 * 10)(), ctypes.c_uint8()
            self.lib.bcg729Encoder(self.encoder, np.ascontiguousarray(half).ctypes.data, frame, ctypes.byref(length))
            out += bytes(frame)[:length.value]
        return out

    def _decode(self, payload: bytes) -> np.ndarray:
        out = []
        for at in range(0, len(payload), 10):
            signal = np.zeros(80, dtype=np.int16)
            self.lib.bcg729Decoder(self.decoder, payload[at:at + 10], 10, 0, 0, 0, signal.ctypes.data)
            out.append(signal)
        return np.concatenate(out).astype(float)


class Gsm(Vocoder):
    """libgsm (ETSI GSM 06.10 full rate): one 33-byte frame a packet."""

    name, payload_type = "GSM", 3

    def __init__(self):
        self.lib = lib = _library("gsm", "libgsm.so.1")
        lib.gsm_create.restype = ctypes.c_void_p
        lib.gsm_encode.argtypes = lib.gsm_decode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        self.encoder, self.decoder = lib.gsm_create(), lib.gsm_create()

    def _encode(self, pcm: np.ndarray) -> bytes:
        frame = (ctypes.c_uint8 * 33)()
        self.lib.gsm_encode(self.encoder, pcm.ctypes.data, frame)
        return bytes(frame)

    def _decode(self, payload: bytes) -> np.ndarray:
        signal = np.zeros(160, dtype=np.int16)
        self.lib.gsm_decode(self.decoder, payload, signal.ctypes.data)
        return signal.astype(float)
