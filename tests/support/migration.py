"""A state at revision 0008 (before defect typing) with rows in every table a migration could lose, and the check that
upgrading kept them."""

from __future__ import annotations

from sqlalchemy import Engine, select, text

from kanoclip.station import db

ROWS = {
    "profiles": "INSERT INTO profiles (name, uid, engine, model_changes, thresholds, version, created_at, updated_at) "
    "VALUES ('p', 'u1', 'torch', '[]', '{}', 3, 1.0, 2.0)",
    "results": "INSERT INTO results (created_at, profile, source, stored_bytes, score, label) "
    "VALUES (1.0, 'p', 'a.png', 10, 0.7, 1), (2.0, 'p', 'b.png', 10, 0.1, 0)",
    "feedback": "INSERT INTO feedback (result_id, verdict, profile_uid, created_at) VALUES (1, 'defect', 'u1', 3.0)",
}


def fill_at_0008(engine: Engine) -> None:
    from alembic import command

    command.upgrade(db._alembic_config(engine), "0008")  # type: ignore[arg-type]
    with engine.begin() as c:
        for statement in ROWS.values():
            c.execute(text(statement))


def check_upgraded(engine: Engine) -> None:
    """Every row is there with its values; the new columns are empty, the new table exists and is empty."""
    assert db.current_revision(engine) == "0009"
    with engine.connect() as c:
        results = c.execute(select(db.results).order_by(db.results.c.id)).all()
        assert [(r.source, r.score, r.label, r.defect_type, r.defect_type_p) for r in results] == [
            ("a.png", 0.7, 1, None, None),
            ("b.png", 0.1, 0, None, None),
        ]
        verdicts = c.execute(select(db.feedback)).all()
        assert [(f.result_id, f.verdict, f.defect_type) for f in verdicts] == [(1, "defect", None)]
        profile = c.execute(select(db.profiles)).one()
        assert (profile.name, profile.version, profile.model_version) == ("p", 3, None)
        assert c.execute(select(db.defect_examples)).all() == []
