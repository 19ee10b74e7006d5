"""Streaming file encryption: round trips, size arithmetic, and every kind of tampering."""

from __future__ import annotations

import array
import hashlib
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connector.crypto import (
    DEFAULT_CHUNK_SIZE,
    CryptoError,
    IntegrityError,
    StreamDecryptor,
    StreamEncryptor,
    ciphertext_size,
    decrypt_bytes,
    encrypt_bytes,
    new_file_key,
    plaintext_size,
)
from connector.crypto.stream import HEADER_SIZE, MAX_CHUNK_SIZE, TAG_SIZE

CS = 64  # small chunk size so that multi-chunk cases stay tiny
SEALED = CS + TAG_SIZE


def _pieces(data: bytes, rng: random.Random, largest: int) -> Iterator[bytes]:
    """Cut ``data`` into random pieces (including empty ones) the way a socket would."""
    pos = 0
    while pos < len(data):
        step = rng.randint(0, largest)
        yield data[pos : pos + step]
        pos += step


def _encrypt(
    key: bytes, data: bytes, chunk_size: int, rng: random.Random
) -> tuple[StreamEncryptor, bytes]:
    """Encrypt in random pieces; return the finalized encryptor and the whole ciphertext."""
    encryptor = StreamEncryptor(key, chunk_size)
    out = b"".join(encryptor.update(p) for p in _pieces(data, rng, 3 * chunk_size))
    return encryptor, out + encryptor.finalize()


def _split(ciphertext: bytes, sealed: int = SEALED) -> tuple[bytes, list[bytes]]:
    """Header and list of sealed chunks."""
    body = ciphertext[HEADER_SIZE:]
    return ciphertext[:HEADER_SIZE], [body[i : i + sealed] for i in range(0, len(body), sealed)]


def _decrypt_collecting(key: bytes, ciphertext: bytes, piece: int = 7) -> tuple[bytes, Exception]:
    """Feed ``ciphertext`` in small pieces; return what was released before the failure."""
    decryptor = StreamDecryptor(key)
    released = bytearray()
    try:
        for pos in range(0, len(ciphertext), piece):
            released += decryptor.update(ciphertext[pos : pos + piece])
        released += decryptor.finalize()
    except IntegrityError as exc:
        return bytes(released), exc
    pytest.fail("tampered stream was accepted")


@pytest.fixture
def key() -> bytes:
    return new_file_key()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        DEFAULT_CHUNK_SIZE - 1,
        DEFAULT_CHUNK_SIZE,
        DEFAULT_CHUNK_SIZE + 1,
        2 * DEFAULT_CHUNK_SIZE,
    ],
    ids=["empty", "one-byte", "chunk-1", "one-chunk", "chunk+1", "two-chunks"],
)
def test_round_trip_default_chunk_size(key: bytes, size: int) -> None:
    data = random.Random(size).randbytes(size)
    encryptor = StreamEncryptor(key)
    ciphertext = encryptor.update(data) + encryptor.finalize()

    assert len(ciphertext) == ciphertext_size(size) == encryptor.ciphertext_size
    assert plaintext_size(len(ciphertext)) == size
    assert encryptor.plaintext_size == size
    assert encryptor.sha256 == hashlib.sha256(data).hexdigest()
    decryptor = StreamDecryptor(key)
    assert decryptor.update(ciphertext) + decryptor.finalize() == data
    assert decryptor.sha256 == hashlib.sha256(data).hexdigest()
    assert decryptor.plaintext_size == size


def test_empty_file_is_header_plus_one_tag(key: bytes) -> None:
    ciphertext = encrypt_bytes(key, b"")
    assert len(ciphertext) == HEADER_SIZE + TAG_SIZE
    assert ciphertext[:4] == b"CS1\x01"
    assert int.from_bytes(ciphertext[4:8], "big") == DEFAULT_CHUNK_SIZE
    assert decrypt_bytes(key, ciphertext) == b""


@pytest.mark.parametrize("multiple", [1, 2, 5])
def test_exact_multiple_ends_with_full_final_chunk(key: bytes, multiple: int) -> None:
    ciphertext = encrypt_bytes(key, b"x" * (multiple * CS), chunk_size=CS)
    _, chunks = _split(ciphertext)
    assert [len(c) for c in chunks] == [SEALED] * multiple


@pytest.mark.parametrize("seed", range(40))
def test_round_trip_random_sizes_and_pieces(key: bytes, seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([rng.randint(0, 5 * CS), rng.randint(0, 50 * CS), rng.randint(1, 4) * CS])
    data = rng.randbytes(size)

    encryptor, ciphertext = _encrypt(key, data, CS, rng)
    assert len(ciphertext) == ciphertext_size(size, CS) == encryptor.ciphertext_size
    assert plaintext_size(len(ciphertext), chunk_size=CS) == size
    assert encryptor.sha256 == hashlib.sha256(data).hexdigest()

    decryptor = StreamDecryptor(key)
    plain = b"".join(decryptor.update(p) for p in _pieces(ciphertext, rng, 3 * SEALED))
    plain += decryptor.finalize()
    assert plain == data
    assert decryptor.sha256 == hashlib.sha256(data).hexdigest()
    assert decryptor.plaintext_size == size


def test_encryptor_holds_back_a_full_chunk_until_more_data_arrives(key: bytes) -> None:
    encryptor = StreamEncryptor(key, CS)
    assert encryptor.update(b"a" * CS) == b""  # might be the final chunk
    first = encryptor.update(b"b")
    assert len(first) == HEADER_SIZE + SEALED  # header leaves with the first chunk
    assert encryptor.update(b"") == b""
    assert len(encryptor.finalize()) == 1 + TAG_SIZE


def test_decryptor_releases_only_chunks_known_not_to_be_last(key: bytes) -> None:
    data = bytes(range(2 * CS))
    ciphertext = encrypt_bytes(key, data, chunk_size=CS)
    decryptor = StreamDecryptor(key)
    assert decryptor.update(ciphertext[: HEADER_SIZE + SEALED]) == b""
    assert (
        decryptor.update(ciphertext[HEADER_SIZE + SEALED : HEADER_SIZE + SEALED + 1]) == data[:CS]
    )
    assert decryptor.update(ciphertext[HEADER_SIZE + SEALED + 1 :]) == b""
    assert decryptor.finalize() == data[CS:]


def test_accepts_any_bytes_like_input(key: bytes) -> None:
    words = array.array("I", range(100))
    raw = words.tobytes()
    for data in (bytearray(raw), memoryview(raw), memoryview(words)):
        encryptor = StreamEncryptor(key, CS)
        ciphertext = encryptor.update(data) + encryptor.finalize()
        assert encryptor.sha256 == hashlib.sha256(raw).hexdigest()
        decryptor = StreamDecryptor(key)
        assert decryptor.update(memoryview(ciphertext)) + decryptor.finalize() == raw


def test_same_plaintext_encrypts_differently(key: bytes) -> None:
    assert encrypt_bytes(key, b"hello") != encrypt_bytes(key, b"hello")


def test_streams_in_worker_threads(key: bytes) -> None:
    datas = [random.Random(i).randbytes(i * 997) for i in range(1, 9)]

    def round_trip(data: bytes) -> bytes:
        return decrypt_bytes(key, encrypt_bytes(key, data, chunk_size=256))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(round_trip, datas)) == datas


def test_misuse_after_finalize(key: bytes) -> None:
    encryptor = StreamEncryptor(key, CS)
    with pytest.raises(CryptoError, match="after finalize"):
        _ = encryptor.sha256
    encryptor.finalize()
    with pytest.raises(CryptoError, match="after finalize"):
        encryptor.update(b"more")
    with pytest.raises(CryptoError):
        encryptor.finalize()
    decryptor = StreamDecryptor(key)
    decryptor.update(encrypt_bytes(key, b"abc"))
    decryptor.finalize()
    with pytest.raises(CryptoError, match="after finalize"):
        decryptor.update(b"x")


@pytest.mark.parametrize("bad", [b"", b"k" * 16, b"k" * 31])
def test_wrong_key_size_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        StreamEncryptor(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        StreamDecryptor(bad)


@pytest.mark.parametrize("chunk_size", [0, -1, MAX_CHUNK_SIZE + 1])
def test_bad_chunk_size_is_refused(key: bytes, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        StreamEncryptor(key, chunk_size)
    with pytest.raises(ValueError, match="chunk size"):
        ciphertext_size(10, chunk_size)


def test_size_functions_agree_over_a_range() -> None:
    for size in range(0, 10 * CS + 2):
        assert plaintext_size(ciphertext_size(size, CS), chunk_size=CS) == size


@pytest.mark.parametrize(
    "size",
    [
        0,
        HEADER_SIZE,  # no final chunk at all
        HEADER_SIZE + TAG_SIZE - 1,
        HEADER_SIZE + SEALED + 1,  # a full chunk then 1 byte: too short for a chunk
        HEADER_SIZE + SEALED + TAG_SIZE - 1,
        HEADER_SIZE + SEALED + TAG_SIZE,  # empty final chunk after a full one
    ],
)
def test_plaintext_size_rejects_impossible_sizes(size: int) -> None:
    with pytest.raises(IntegrityError, match="not a possible ciphertext size"):
        plaintext_size(size, chunk_size=CS)


def test_ciphertext_size_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        ciphertext_size(-1)


# --- tampering: every case must raise IntegrityError and release no bad plaintext ---------------

DATA = random.Random(99).randbytes(5 * CS + 10)  # 5 full chunks and a short final one


@pytest.fixture
def sealed(key: bytes) -> bytes:
    return encrypt_bytes(key, DATA, chunk_size=CS)


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("offset", [0, 17, -1])
def test_flipped_bit_in_a_chunk(key: bytes, sealed: bytes, index: int, offset: int) -> None:
    header, chunks = _split(sealed)
    damaged = bytearray(chunks[index])
    damaged[offset] ^= 0x10
    chunks[index] = bytes(damaged)

    released, exc = _decrypt_collecting(key, header + b"".join(chunks))
    assert released == DATA[: index * CS]  # everything before, nothing of the bad chunk
    assert f"chunk {index} failed authentication" in str(exc)
    assert "modified, truncated or the key is wrong" in str(exc)


@pytest.mark.parametrize("bit", range(HEADER_SIZE * 8))
def test_flipped_bit_in_the_header(key: bytes, sealed: bytes, bit: int) -> None:
    damaged = bytearray(sealed)
    damaged[bit // 8] ^= 1 << (bit % 8)
    released, _ = _decrypt_collecting(key, bytes(damaged))
    assert released == b""


@pytest.mark.parametrize("index", [0, 2, 4])
def test_dropped_chunk(key: bytes, sealed: bytes, index: int) -> None:
    header, chunks = _split(sealed)
    del chunks[index]
    released, exc = _decrypt_collecting(key, header + b"".join(chunks))
    assert released == DATA[: index * CS]
    assert f"chunk {index} failed authentication" in str(exc)


def test_swapped_chunks(key: bytes, sealed: bytes) -> None:
    header, chunks = _split(sealed)
    chunks[1], chunks[3] = chunks[3], chunks[1]
    released, exc = _decrypt_collecting(key, header + b"".join(chunks))
    assert released == DATA[:CS]
    assert "chunk 1 failed authentication" in str(exc)


def test_truncated_at_a_chunk_boundary(key: bytes, sealed: bytes) -> None:
    header, chunks = _split(sealed)
    released, exc = _decrypt_collecting(key, header + b"".join(chunks[:-1]))
    assert released == DATA[: 4 * CS]  # chunk 4 was held back: it could have been the last
    assert "truncated" in str(exc)


@pytest.mark.parametrize("cut", [1, 5, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3, -1, -17, -30])
def test_truncated_mid_chunk(key: bytes, sealed: bytes, cut: int) -> None:
    released, exc = _decrypt_collecting(key, sealed[:cut])
    # Chunks before the cut are authentic and may be released; the incomplete one never is.
    assert DATA.startswith(released)
    assert len(released) <= 5 * CS
    assert "truncated" in str(exc) or "failed authentication" in str(exc)


def test_truncated_empty_file(key: bytes) -> None:
    ciphertext = encrypt_bytes(key, b"")
    for cut in range(len(ciphertext)):
        released, _ = _decrypt_collecting(key, ciphertext[:cut])
        assert released == b""


@pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG_SIZE, b"y" * SEALED, b"z" * (SEALED + 5)])
def test_appended_trailing_bytes(key: bytes, sealed: bytes, extra: bytes) -> None:
    released, _ = _decrypt_collecting(key, sealed + extra)
    assert DATA.startswith(released)
    assert len(released) <= 5 * CS


def test_trailing_data_after_full_final_chunk_is_named(key: bytes) -> None:
    data = b"q" * (3 * CS)
    ciphertext = encrypt_bytes(key, data, chunk_size=CS)
    released, exc = _decrypt_collecting(key, ciphertext + b"more data")
    assert released == data[: 2 * CS]
    assert "trailing data" in str(exc)


def test_wrong_key(sealed: bytes) -> None:
    released, exc = _decrypt_collecting(new_file_key(), sealed)
    assert released == b""
    assert "chunk 0 failed authentication" in str(exc)


def test_wrong_key_on_empty_file(key: bytes) -> None:
    released, _ = _decrypt_collecting(new_file_key(), encrypt_bytes(key, b""))
    assert released == b""


def test_chunk_spliced_from_another_file_with_the_same_key(key: bytes, sealed: bytes) -> None:
    other = encrypt_bytes(key, bytes(len(DATA)), chunk_size=CS)
    header, chunks = _split(sealed)
    _, other_chunks = _split(other)
    chunks[2] = other_chunks[2]  # same position, same key, different file
    released, exc = _decrypt_collecting(key, header + b"".join(chunks))
    assert released == DATA[: 2 * CS]
    assert "chunk 2 failed authentication" in str(exc)


def test_header_from_another_file_with_the_same_key(key: bytes, sealed: bytes) -> None:
    other = encrypt_bytes(key, DATA, chunk_size=CS)
    released, _ = _decrypt_collecting(key, other[:HEADER_SIZE] + sealed[HEADER_SIZE:])
    assert released == b""


def test_not_a_stream(key: bytes) -> None:
    with pytest.raises(IntegrityError, match="bad magic"):
        decrypt_bytes(key, b"PK\x03\x04" + bytes(40))


def test_oversized_chunk_size_in_header_is_refused(key: bytes, sealed: bytes) -> None:
    damaged = sealed[:4] + (MAX_CHUNK_SIZE + 1).to_bytes(4, "big") + sealed[8:]
    with pytest.raises(IntegrityError, match="chunk size"):
        decrypt_bytes(key, damaged)


def test_empty_final_chunk_after_full_chunks_is_refused(key: bytes) -> None:
    # Only a key holder can build this; the format still has one encoding per plaintext.
    ciphertext = encrypt_bytes(key, b"a" * CS, chunk_size=CS)
    prefix = ciphertext[8:HEADER_SIZE]
    aead = AESGCM(key)
    forged = (
        ciphertext[:HEADER_SIZE]
        + aead.encrypt(prefix + (0).to_bytes(4, "big"), b"a" * CS, b"\x00")
        + aead.encrypt(prefix + (1).to_bytes(4, "big"), b"", b"\x01")
    )
    with pytest.raises(IntegrityError, match="empty final chunk"):
        decrypt_bytes(key, forged)


def test_decryptor_stays_failed(key: bytes, sealed: bytes) -> None:
    decryptor = StreamDecryptor(key)
    damaged = bytearray(sealed)
    damaged[HEADER_SIZE] ^= 1
    with pytest.raises(IntegrityError):
        decryptor.update(bytes(damaged))
    with pytest.raises(IntegrityError, match="already failed"):
        decryptor.update(b"")
    with pytest.raises(IntegrityError, match="already failed"):
        decryptor.finalize()
    with pytest.raises(CryptoError):
        _ = decryptor.sha256
