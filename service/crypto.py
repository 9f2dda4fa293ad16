"""Optional encryption of stored face crops at rest: AES-256-GCM (``cryptography``), bound to the face's id.

A sealed crop is ``MAGIC | key id (4 bytes) | nonce (12 bytes) | ciphertext+tag``; the face id is the associated
data, so a crop copied onto another face's row does not open. Plain crops (stored before a key was set) stay
readable, so turning encryption on needs no migration; a sealed crop without the key is an error, never garbage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import SecretStr

from embedding.errors import ImageError

MAGIC = b"FDBC1"
KEY_BYTES = 32
NONCE_BYTES = 12


def new_key() -> str:
    """A fresh key for ``FACEDB_CROP_KEY``: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str) -> bytes:
    """The 32 key bytes from base64 (standard or URL-safe); ValueError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(text.strip().replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError):
        raise ValueError("FACEDB_CROP_KEY must be base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"FACEDB_CROP_KEY must decode to {KEY_BYTES} bytes, not {len(raw)}")
    return raw


class CropCipher:
    """Seals crops on the way into the database and opens them on the way out; without a key, a pass-through."""

    def __init__(self, key: bytes | None) -> None:
        self._aead = AESGCM(key) if key is not None else None
        self._key_id = hashlib.sha256(b"facedb-crop-key" + key).digest()[:4] if key is not None else b""

    @classmethod
    def from_setting(cls, key: SecretStr | None) -> CropCipher:
        """The cipher for ``FACEDB_CROP_KEY`` (a pass-through when it is not set)."""
        return cls(parse_key(key.get_secret_value()) if key is not None else None)

    def seal(self, face_id: int, data: bytes) -> bytes:
        """``data`` encrypted for the face ``face_id`` (unchanged without a key)."""
        if self._aead is None:
            return data
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + self._key_id + nonce + self._aead.encrypt(nonce, data, _aad(face_id))

    def open(self, face_id: int, data: bytes) -> bytes:
        """The plain crop; ImageError ``crop_encrypted`` when it cannot be opened with this key."""
        if not data.startswith(MAGIC):
            return data
        if self._aead is None:
            raise ImageError("crop_encrypted", "the stored crop is encrypted and FACEDB_CROP_KEY is not set")
        key_id, rest = data[len(MAGIC) : len(MAGIC) + 4], data[len(MAGIC) + 4 :]
        if key_id != self._key_id:
            raise ImageError("crop_encrypted", "the stored crop was encrypted with another FACEDB_CROP_KEY")
        try:
            return self._aead.decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], _aad(face_id))
        except InvalidTag:
            raise ImageError("crop_encrypted", f"the stored crop of face {face_id} fails authentication") from None


def _aad(face_id: int) -> bytes:
    return b"facedb-crop:" + str(face_id).encode()
