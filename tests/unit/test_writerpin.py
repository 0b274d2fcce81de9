"""writer-pin decisions (pure) and the writer controller's apply, with plain objects."""

from __future__ import annotations

import logging

import pytest

from pylb.balance.writerpin import (
    ACTIVE_BACK,
    DOWN,
    FAILBACK,
    MANUAL,
    NONE,
    START,
    WriterPin,
)
from pylb.config.model import Address, Listen, ServerConf
from pylb.galera.writer import (
    WriterError,
    load_writers,
    restore_writers,
    set_writer,
    show_writer,
    writer_info,
)
from pylb.proxy.backend import AdminState, Backend
from tests.unit.conftest_balance import servers


class Changes:
    """Records on_change calls: (old name, new name, reason)."""

    def __init__(self, bal: WriterPin) -> None:
        self.seen: list[tuple[str | None, str | None, str]] = []
        bal.on_change = self

    def __call__(self, old, new, reason) -> None:
        self.seen.append((old and old.name, new and new.name, reason))


def test_first_election_is_start_and_epoch_counts_changes() -> None:
    a, b, c = servers("A", "B", "C")
    bal = WriterPin([a, b, c])
    assert (bal.writer, bal.reason, bal.epoch) == (a, START, 1)
    ch = Changes(bal)
    a.usable = False
    bal.update()
    assert ch.seen == [("A", "B", DOWN)] and bal.epoch == 2
    bal.update()  # idempotent: no new change
    assert len(ch.seen) == 1


def test_failback_is_an_up_event_and_respects_a_manual_switch() -> None:
    a, b, c = servers("A", "B", "C")
    bal = WriterPin([a, b, c], failback=True)
    ch = Changes(bal)
    a.usable = False
    bal.update()
    a.usable = True  # the checker flips it only after `rise` passes
    bal.update()
    assert ch.seen == [("A", "B", DOWN), ("B", "A", FAILBACK)]
    assert bal.set_writer(c) and bal.writer is c and bal.reason == MANUAL
    bal.update()
    assert bal.writer is c  # a manual choice holds: A did not just come back
    b.usable = False
    bal.update()
    assert bal.writer is c  # B was not the writer: nothing moves
    b.usable = True
    bal.update()
    assert bal.writer is a  # B, preferred over C, came back: fail back to the first, A
    assert ch.seen[-1] == ("C", "A", FAILBACK)


def test_failback_does_not_move_to_a_returning_server_ranked_lower() -> None:
    a, b, c = servers("A", "B", "C")
    bal = WriterPin([a, b, c], failback=True)
    c.usable = False
    bal.update()
    c.usable = True
    bal.update()
    assert bal.writer is a and bal.epoch == 1


def test_manual_switch_refused_for_ineligible_servers() -> None:
    a, b = servers("A", "B")
    (k,) = servers("K", backup=True)
    bal = WriterPin([a, b, k])
    b.usable = False
    bal.update()
    assert not bal.set_writer(b)
    assert not bal.set_writer(k)  # a backup while an active server is usable
    assert bal.writer is a


def test_no_server_then_one_back() -> None:
    a, b = servers("A", "B")
    bal = WriterPin([a, b])
    ch = Changes(bal)
    a.usable = b.usable = False
    bal.update()
    b.usable = True
    bal.update()
    assert ch.seen == [("A", None, NONE), (None, "B", START)]


def test_backup_writer_gives_way_to_a_returning_active() -> None:
    (a,) = servers("A")
    (k,) = servers("K", backup=True)
    bal = WriterPin([a, k])
    ch = Changes(bal)
    a.usable = False
    bal.update()
    a.usable = True
    bal.update()
    assert ch.seen == [("A", "K", DOWN), ("K", "A", ACTIVE_BACK)]


@pytest.mark.parametrize("failback", [False, True])
def test_same_inputs_same_writer(failback: bool) -> None:
    """Two proxy nodes with the same config that see the same health events agree at
    every step (the deterministic half of point 4)."""
    events = [("A", False), ("B", False), ("A", True), ("C", False), ("B", True), ("C", True)]
    nodes = []
    for _ in range(2):
        srv = servers("A", "B", "C")
        srv[2].priority = 0  # C preferred by priority, before configured order
        nodes.append((srv, WriterPin(srv, failback=failback)))
    for name, up in events:
        for srv, bal in nodes:
            next(s for s in srv if s.name == name).usable = up
            bal.update()
        w = [bal.writer.name if bal.writer else None for _, bal in nodes]
        assert w[0] == w[1], (name, up, w)


# -- the controller on a real Backend ----------------------------------------------------


class FakeSession:
    """What Server.sessions holds: an object with server_gone(server)."""

    def __init__(self, server) -> None:
        self.server = server
        self.gone = False
        server.sessions.add(self)

    def server_gone(self, server) -> None:
        assert server is self.server
        self.gone = True
        server.sessions.discard(self)


def backend(failback: bool = False, **kw) -> Backend:
    srv = tuple(
        ServerConf(name=f"db{i}", address=Address("127.0.0.1", 33060 + i)) for i in range(1, 4)
    )
    conf = Listen(
        name="mysql",
        binds=(Address("127.0.0.1", 0),),
        servers=srv,
        mode="tcp",
        balance="writer-pin",
        failback=failback,
        **kw,
    )
    return Backend(conf)


def test_writer_change_closes_old_writer_sessions_first(caplog) -> None:
    be = backend()
    db1, db2, _ = be.servers
    assert be.writer.writer is db1
    on1 = [FakeSession(db1) for _ in range(3)]
    on2 = FakeSession(db2)  # e.g. a session that was redispatched there earlier
    caplog.set_level(logging.INFO, logger="pylb.galera")
    db1.oper_up = False
    be.server_changed(db1)
    assert be.pick() is db2
    assert all(s.gone for s in on1) and not db1.sessions
    assert not on2.gone
    assert be.writer.last_closed == 3
    assert "Writer of mysql is now db2 (was db1, reason: down); 3 sessions closed on db1." in (
        caplog.text
    )


def test_admin_show_and_set_writer() -> None:
    be = backend()
    db1, db2, db3 = be.servers
    s = FakeSession(db1)
    text = show_writer(be)
    first, *rows = text.splitlines()
    assert first.startswith("writer db1 epoch 1 reason start since ")
    assert first.endswith(" failback off")
    assert rows == ["1 db1 UP ready 0 writer", "2 db2 UP ready 0", "3 db3 UP ready 0"]
    assert set_writer(be, "db3") == "mysql: writer is now db3 (was db1); 1 sessions closed.\n"
    assert s.gone and be.pick() is db3
    assert set_writer(be, "db3") == "mysql: db3 is already the writer.\n"
    info = writer_info(be)
    assert info["writer"] == "db3" and info["reason"] == "manual" and info["epoch"] == 2
    db2.admin = AdminState.MAINT
    be.server_changed(db2)
    with pytest.raises(WriterError, match=r"mysql/db2 cannot be the writer now \(maint\)"):
        set_writer(be, "db2")
    db1.oper_up = False
    be.server_changed(db1)
    with pytest.raises(WriterError, match=r"\(down\)"):
        set_writer(be, "db1")
    with pytest.raises(WriterError, match="no server 'nope'"):
        set_writer(be, "nope")


def test_admin_on_other_balancers_is_an_error() -> None:
    conf = Listen(
        name="web",
        binds=(Address("127.0.0.1", 0),),
        servers=(ServerConf(name="a", address=Address("127.0.0.1", 1)),),
    )
    be = Backend(conf)
    assert be.writer is None
    with pytest.raises(WriterError, match="does not use balance writer-pin"):
        show_writer(be)


# -- reload: the next worker restores the writer -----------------------------------------


def test_next_worker_restores_the_writer(tmp_path) -> None:
    path = tmp_path / "writers.json"
    old = backend()
    assert restore_writers([old], path) == {}  # no file yet: elect by order
    set_writer(old, "db2")  # saved on every change from now on
    assert load_writers(path) == {"mysql": "db2"}
    new = backend()  # the reloaded worker's fresh Backend: db1 by order
    assert new.writer.writer.name == "db1"
    assert restore_writers([new], path) == {"mysql": "db2"}
    assert new.pick().name == "db2" and new.writer.balancer.reason == "restored"


def test_restore_skips_a_writer_that_is_not_eligible(tmp_path) -> None:
    path = tmp_path / "writers.json"
    path.write_text('{"version": 1, "writers": {"mysql": "db3", "other": "x"}}')
    be = backend()
    be.server("db3").oper_up = False
    be.server_changed(be.server("db3"))
    assert restore_writers([be], path) == {}
    assert be.writer.writer.name == "db1"


def test_unreadable_state_file_is_a_fresh_start(tmp_path) -> None:
    path = tmp_path / "writers.json"
    for junk in ("{", "[]", '{"writers": [1]}', '{"writers": {"mysql": 3}}'):
        path.write_text(junk)
        assert load_writers(path) == {}
    assert load_writers(tmp_path / "missing.json") == {}
