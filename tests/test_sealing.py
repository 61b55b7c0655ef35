"""The sealing scheme and the key slots: the write side cannot read, slots open only with their
password, the recovery key alone opens the store, a crash-cut stream loses only its last record."""

import io

import pytest

from appliance.store.keyslots import KeySlotError, KeySlots, parse_recovery, recovery_text
from appliance.store.sealing import (Opener, SealError, Sealer, complete_records, is_sealed,
                                     is_sealed_stream, seal_file)


@pytest.fixture
def store(tmp_path):
    slots = KeySlots(tmp_path)
    return slots, slots.create()


def test_the_recorder_seals_with_the_public_key_alone_and_the_secret_opens(store, tmp_path):
    slots, secret = store
    sealer = Sealer.load(tmp_path)
    assert is_sealed(tmp_path)
    sealed = sealer.seal_field("+4930123456", "number")
    assert "4930123456" not in sealed and sealed.startswith("sealed:")
    assert Opener(secret).open_field(sealed, "number") == "+4930123456"
    with pytest.raises(SealError):
        Opener(secret).open_field(sealed, "notes")         # bound to its field
    with pytest.raises(SealError):
        Opener(bytes(32)).open_field(sealed, "number")      # another store's secret
    assert Opener(secret).open_field("plain", "number") == "plain"
    with pytest.raises(KeySlotError, match="sealed already"):
        slots.create()


def test_a_slot_opens_with_its_password_only_and_goes_with_its_holder(store):
    slots, secret = store
    slots.add("user:1", "correct horse battery", secret)
    slots.add("user:2", "another long password", secret)
    assert slots.unlock("user:1", "correct horse battery") == secret
    with pytest.raises(KeySlotError, match="does not unlock"):
        slots.unlock("user:1", "wrong password here")
    with pytest.raises(KeySlotError, match="does not unlock"):
        slots.unlock("user:2", "correct horse battery")
    slots.add("user:1", "a changed password!", secret)
    with pytest.raises(KeySlotError):
        slots.unlock("user:1", "correct horse battery")
    assert slots.unlock("user:1", "a changed password!") == secret
    assert slots.remove("user:2") and slots.holders() == ["user:1"]
    with pytest.raises(KeySlotError, match="no key slot"):
        slots.unlock("user:2", "another long password")
    with pytest.raises(KeySlotError, match="does not belong"):
        slots.add("user:3", "whatever password", bytes(32))
    assert "wrapped" in slots.path.read_text() and oct(slots.path.stat().st_mode)[-3:] == "600"


def test_the_recovery_key_is_checked_and_opens_the_store(store, tmp_path):
    slots, secret = store
    text = recovery_text(secret)
    assert slots.unlock_with_recovery(text.lower().replace("-", " ")) == secret
    typo = ("A" if text[0] != "A" else "B") + text[1:]
    with pytest.raises(KeySlotError, match="mistyped"):
        parse_recovery(typo)
    with pytest.raises(KeySlotError, match="not in it"):
        parse_recovery(text.replace(text[3], "1", 1) if text[3] != "-" else "1" + text[1:])
    other = KeySlots(tmp_path / "other")
    other_secret = other.create()
    with pytest.raises(KeySlotError, match="another store"):
        slots.unlock_with_recovery(recovery_text(other_secret))


def test_a_stream_cut_by_a_crash_keeps_every_complete_record(store, tmp_path):
    _, secret = store
    sealer = Sealer.load(tmp_path)
    path = tmp_path / "spool.sealed"
    records = [bytes([i]) * (1000 + i) for i in range(5)]
    stream = sealer.new_stream()
    sealed = [stream.record(data) for data in records]
    whole = stream.header() + b"".join(sealed)
    assert b"\x01" * 100 not in whole
    path.write_bytes(whole[:-10])                            # the last record torn
    assert list(Opener(secret).read_stream(path)) == records[:4]
    assert list(stream.read(path)) == records[:4]            # the writer reads its own stream back
    assert complete_records(path) == (4, len(whole) - len(sealed[4]))
    path.write_bytes(stream.header() + b"".join(sealed[1:]))  # a record dropped: the order shows
    with pytest.raises(SealError):
        list(Opener(secret).read_stream(path))
    with pytest.raises(SealError):
        list(Opener(bytes(32)).read_stream(path))            # not this store's
    target = io.BytesIO()
    seal_file(sealer, io.BytesIO(bytes(range(256)) * 1000), target, chunk=4096)
    path.write_bytes(target.getvalue())
    assert is_sealed_stream(path.read_bytes()[:40])
    assert b"".join(Opener(secret).read_stream(path)) == bytes(range(256)) * 1000
