"""The evidence ledger in a file of its own: events recorded with their change are put on the
chain once, in order; a ledger someone else made, or one gone missing, is refused, and the
doctor and `verify` say so. (The web UI as a user of its own, writing through the signer, is in
test_signer.py; the chain brought over from an older catalogue, in test_migrations.py.)"""

import os
import sqlite3
from contextlib import closing

import pytest

from appliance import doctor
from appliance.config import load_config
from appliance.store import ledger, ledgerkeeper
from appliance.store.catalogue import CATALOGUE_NAME, Catalogue, connect
from appliance.store.evidence import verify_store
from appliance.store.ledger import LEDGER_DIR, ledger_path
from appliance.store.ledgerkeeper import LedgerError
from appliance.store.retention import Store
from conftest import callrec, record_call, write_config


@pytest.fixture
def store(tmp_path):
    config = write_config(tmp_path, recorder={"data_dir": "data"})
    data = tmp_path / "data"
    catalogue = Catalogue(data)
    yield Store.configured(catalogue, data, load_config(config)), config
    catalogue.close()


def queued(data) -> int:
    """The events waiting in the catalogue, read as they are (without writing what waits)."""
    with closing(sqlite3.connect(f"{(data / CATALOGUE_NAME).as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM ledger_queue").fetchone()[0]


def test_a_change_is_on_the_chain_when_it_returns_and_the_ledger_is_its_owners_alone(store):
    store, _ = store
    data = store.data_dir
    call = record_call(store.catalogue, data)
    store.hold(call["id"], "dispute", "owner")
    assert [e["event"] for e in store.catalogue.ledger_of(call["id"])[0]] == ["recorded", "held"]
    assert queued(data) == 0
    assert (data / LEDGER_DIR).stat().st_mode & 0o777 == 0o750
    assert ledger_path(data).stat().st_mode & 0o777 == 0o640
    assert verify_store(store.catalogue, data) == []


def test_a_stop_between_the_chain_and_the_queue_puts_nothing_on_the_chain_twice(store):
    store, _ = store
    data = store.data_dir
    call = record_call(store.catalogue, data)
    # Another process (the web UI, whose request to the signer was lost) committed two changes.
    other = connect(data / CATALOGUE_NAME)
    for reason in ("one", "two"):
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE calls SET hold_reason = ? WHERE id = ?", [reason, call["id"]])
        ledger.record(other, "held", call["id"], call["sha256"], reason)
        other.execute("COMMIT")
    assert queued(data) == 2
    # The chain is committed, then the catalogue cannot be written (as if stopped right then).
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        ledgerkeeper.drain(store.catalogue)
    other.execute("ROLLBACK")
    other.close()
    assert queued(data) == 2
    assert [e["detail"] for e in store.catalogue.ledger_of(call["id"])[0]][1:] == ["one", "two"]
    assert ledgerkeeper.drain(store.catalogue) == 0     # what is on the chain is not put there again
    assert queued(data) == 0
    assert [e["detail"] for e in store.catalogue.ledger_of(call["id"])[0]][1:] == ["one", "two"]
    assert verify_store(store.catalogue, data) == []


@pytest.mark.parametrize("change", ["owner", "group-writable"])
def test_a_ledger_someone_else_could_write_is_refused_and_named(store, change):
    store, config = store
    data = store.data_dir
    call = record_call(store.catalogue, data)
    path = ledger_path(data)
    if change == "owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the file away")
        os.chown(path, 54321, -1)       # what the web UI's user would make: a file of its own
        named = "is owned by uid 54321"
    else:
        os.chmod(path, 0o660)
        named = f"chmod go-w {path}"
    store.hold(call["id"], "dispute", "owner")          # committed; its event waits
    assert queued(data) == 1
    with pytest.raises(LedgerError, match=named):
        ledgerkeeper.drain(store.catalogue)
    result = callrec("verify", "--data", str(data), check=False)
    assert result.returncode == 1 and named in result.stdout and "1 event(s) wait" in result.stdout
    checked = doctor.check_ledger(load_config(config))
    assert checked.status == doctor.FAIL and named in checked.message


def test_a_missing_ledger_is_not_begun_again(store):
    store, _ = store
    data = store.data_dir
    call = record_call(store.catalogue, data)
    os.unlink(ledger_path(data))
    store.hold(call["id"], "dispute", "owner")
    with pytest.raises(LedgerError, match="missing: restore it from a backup"):
        ledgerkeeper.drain(store.catalogue)
    assert not ledger_path(data).exists() and queued(data) == 1
    problems = verify_store(store.catalogue, data)
    assert any("ledger.db is missing (the ledger was begun on 20" in problem for problem in problems)
    assert f"call {call['id']}: no `recorded` entry in the ledger" in problems
    assert any("1 event(s) wait" in problem for problem in problems)


def test_a_ledger_put_aside_is_not_begun_again_whatever_the_catalogue_says(store):
    store, _ = store
    data = store.data_dir
    call = record_call(store.catalogue, data)
    os.rename(data / LEDGER_DIR, data / "ledger.aside")     # the web UI's user may rename in the data folder
    with store.catalogue.transaction() as db:               # and write the catalogue: it looks not yet moved
        db.execute(f"CREATE TABLE {ledgerkeeper.MOVING_TABLE} (seq INTEGER PRIMARY KEY)")
    store.hold(call["id"], "dispute", "owner")
    with pytest.raises(LedgerError, match=r"missing: restore it from a backup \(it was begun on 20"):
        ledgerkeeper.drain(store.catalogue)
    assert not (data / LEDGER_DIR).exists() and queued(data) == 1
