"""The log's schema: an ordered list of migrations under ``PRAGMA user_version``.

This list is the only definition of the schema. A released migration is never edited; a
change is a new entry at the end. Times are stored as Unix seconds (REAL) for speed and
formatted as ISO 8601 UTC by the ``events`` view, so that::

    sqlite3 .durable/x.db "SELECT * FROM events ORDER BY ts;"

prints the whole execution log, readable by a person.

Tables
    runs    one row per execution of a workflow (status running / completed / failed /
            interrupted / crashed), with the owning process for the lease.
    steps   one row per finished attempt of a step (completed / failed / interrupted /
            not_durable), keyed by (workflow, scope, name, args_digest, occurrence).
    cells   for a completed notebook cell: what it changed in the namespace (restored on
            skip), its displayed outputs, and the step calls its run used.
    workflow_steps  (workflow, step id) of every ended run's steps: per-workflow reads.
    digests what each dependency digest (``steps.code_digest``) covers: a JSON document
            ``{"step", "base", "entries": [[label, digest, short repr or null], ...],
            "refs": [[label, module, qualname], ...]}`` (refs: the code arguments brought),
            written once per digest, so that a step that runs again can say what changed.
    notes   rare events that are not a run or step state change (forget, crash found, ...).
    checkpoint_states  the newest state saved inside each running call (``checkpoint()``),
            one row per call keyed like its step rows, replaced by each new checkpoint and
            deleted once the call completes (unless ``keep_checkpoints``).
    checkpoints  one row per checkpoint ever saved: its call, time and metrics (JSON).
    events  a VIEW: every state change of runs, steps and notes, in time order.
"""

from __future__ import annotations

APPLICATION_ID = 0x444E4231  # "DNB1": marks a SQLite file as a durable_nb log

# ISO 8601 UTC with microseconds, so that ORDER BY ts keeps the order of quick steps.
_ISO = (
    "(strftime('%Y-%m-%dT%H:%M:%S', {col}, 'unixepoch') "
    "|| substr(printf('%.6f', {col} - CAST({col} AS INTEGER)), 2) || 'Z')"
)


def events_view(iso: str, *, checkpoints: bool = True) -> str:
    """``CREATE VIEW events``: every state change in time order, its time written by
    ``iso`` (a template of a Unix time column ``{col}`` as ISO 8601 UTC text, the backend's);
    with ``checkpoints``, one more kind of event: 'step checkpoint'."""
    last = f"SELECT {iso.format(col='ts')}, workflow, run_id, step, kind, detail FROM notes"
    if checkpoints:
        last += (
            "\n        UNION ALL\n"
            f"        SELECT {iso.format(col='created_at')}, workflow, run_id, name, "
            "'step checkpoint', '(' || args_repr || ') #' || seq || coalesce(' ' || metrics, '') "
            "FROM checkpoints"
        )
    return f"""
    CREATE VIEW events (ts, workflow, run, step, kind, detail) AS
        SELECT {iso.format(col="started_at")}, workflow, id, NULL, 'run started',
               'pid ' || pid
          FROM runs
        UNION ALL
        SELECT {iso.format(col="ended_at")}, workflow, id, NULL, 'run ' || status,
               steps_run || ' run, ' || steps_replayed || ' replayed'
               || coalesce('; ' || error, '')
          FROM runs WHERE ended_at IS NOT NULL
        UNION ALL
        SELECT {iso.format(col="started_at")}, workflow, run_id, name,
               'step started', '(' || args_repr || ')'
               || CASE WHEN attempt > 1 THEN ' attempt ' || attempt ELSE '' END
               || coalesce(' -- ' || reason, '')
          FROM steps
        UNION ALL
        SELECT {iso.format(col="ended_at")}, workflow, run_id, name, 'step ' || status,
               CASE WHEN error_type IS NOT NULL THEN error_type || ': ' || error_message
                    ELSE coalesce('-> ' || result_type || ' ' || result_repr, '')
                         || coalesce(' -- ' || reason, '') END
          FROM steps
        UNION ALL
        {last};
"""


_EVENTS_VIEW = events_view(_ISO, checkpoints=False)
_EVENTS_VIEW_11 = events_view(_ISO)  # (once checkpoints exist)

# A checkpoint's history row, from the checkpoint_states row just written (two triggers).
_HISTORY_COLUMNS = (
    "run_id, workflow, scope, name, args_digest, occurrence, code_digest, attempt, seq, "
    "started_at, created_at, args_repr, params, state_size, metrics"
)
_CHECKPOINT_HISTORY = (
    f"INSERT INTO checkpoints ({_HISTORY_COLUMNS}) "
    f"VALUES ({', '.join('NEW.' + c for c in _HISTORY_COLUMNS.split(', '))});"
)

MIGRATIONS: list[str] = [
    # 1: initial schema
    f"""
    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY,
        workflow      TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN
                          ('running', 'completed', 'failed', 'interrupted', 'crashed')),
        started_at    REAL NOT NULL,
        ended_at      REAL,
        owner         TEXT NOT NULL,          -- host:boot:pid:start-ticks of the process
        pid           INTEGER NOT NULL,
        source_digest TEXT,                   -- digest of a cell's source, for cell skip
        inputs_digest TEXT,                   -- digest of the values the cell reads
        steps_run     INTEGER NOT NULL DEFAULT 0,
        steps_replayed INTEGER NOT NULL DEFAULT 0,
        error         TEXT
    );
    CREATE INDEX runs_by_workflow ON runs (workflow, id);

    -- No secondary index on steps: each index costs one more page written per checkpoint
    -- (about +40% per step); a run reads its workflow's keys once, by a scan that stops at
    -- the header of each record (big columns come last, so no overflow page is read).
    CREATE TABLE steps (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER NOT NULL REFERENCES runs (id),
        workflow      TEXT NOT NULL,
        scope         TEXT NOT NULL,          -- key of the enclosing step, '' at top level
        name          TEXT NOT NULL,
        args_digest   TEXT NOT NULL,
        occurrence    INTEGER NOT NULL,
        code_digest   TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        status        TEXT NOT NULL CHECK (status IN
                          ('completed', 'failed', 'interrupted', 'not_durable')),
        started_at    REAL NOT NULL,
        ended_at      REAL NOT NULL,
        result_format TEXT,                   -- 'pickle' (inline) or 'pickle-oob' (blob file)
        result_blob   TEXT,                   -- digest of the blob file holding the value
        result_size   INTEGER,
        result_type   TEXT,
        result_repr   TEXT,
        args_repr     TEXT NOT NULL,
        error_type    TEXT,
        error_message TEXT,
        reason        TEXT,                   -- why it ran again (code changed, ...)
        stdout        TEXT,
        result        BLOB,                   -- inline serialized value
        error_traceback TEXT
    );

    CREATE TABLE cells (
        run_id        INTEGER PRIMARY KEY REFERENCES runs (id),
        variables     BLOB NOT NULL,          -- pickled {{name: (format, bytes|None, blob)}}
        outputs       BLOB NOT NULL,          -- pickled list of (kind, payload) outputs
        blobs         TEXT NOT NULL DEFAULT '' -- space-separated blob digests referenced
    );

    CREATE TABLE notes (
        id            INTEGER PRIMARY KEY,
        ts            REAL NOT NULL,
        workflow      TEXT,
        run_id        INTEGER,
        step          TEXT,
        kind          TEXT NOT NULL,
        detail        TEXT NOT NULL
    );


    {_EVENTS_VIEW}
    """,
    # 2: which completed steps each run replayed (a JSON list of step ids, written at run end)
    """
    ALTER TABLE runs ADD COLUMN replayed_steps TEXT;
    """,
    # 3: steps.status checked with OR instead of IN: SQLite builds an ephemeral index for an
    # IN list on every INSERT, a fifth of a checkpoint's cost. SQLite cannot alter a CHECK, so
    # the table is rebuilt (same columns, same order, same rows); the view is made again.
    f"""
    DROP VIEW events;
    CREATE TABLE steps_3 (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER NOT NULL REFERENCES runs (id),
        workflow      TEXT NOT NULL,
        scope         TEXT NOT NULL,
        name          TEXT NOT NULL,
        args_digest   TEXT NOT NULL,
        occurrence    INTEGER NOT NULL,
        code_digest   TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        status        TEXT NOT NULL CHECK (status = 'completed' OR status = 'failed'
                          OR status = 'interrupted' OR status = 'not_durable'),
        started_at    REAL NOT NULL,
        ended_at      REAL NOT NULL,
        result_format TEXT,
        result_blob   TEXT,
        result_size   INTEGER,
        result_type   TEXT,
        result_repr   TEXT,
        args_repr     TEXT NOT NULL,
        error_type    TEXT,
        error_message TEXT,
        reason        TEXT,
        stdout        TEXT,
        result        BLOB,
        error_traceback TEXT
    );
    INSERT INTO steps_3 SELECT * FROM steps;
    DROP TABLE steps;
    ALTER TABLE steps_3 RENAME TO steps;
    {_EVENTS_VIEW}
    """,
    # 4: dependency digests. steps.code_digest now covers what a step depends on (helpers,
    # globals, closures); each digest's document says what. runs.environment: the versions
    # of the packages a run's steps reference, and Python's (JSON).
    """
    CREATE TABLE digests (
        digest        TEXT PRIMARY KEY,
        doc           TEXT NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE runs ADD COLUMN environment TEXT;
    """,
    # 5: for cell skip, the step calls a cell's run used (replayed or ran), as JSON
    # [[step, digest, argument refs], ...]: each must still be valid to skip.
    """
    ALTER TABLE cells ADD COLUMN steps TEXT;
    """,
    # 6: which steps belong to each workflow, written once per run when it ends (or is found
    # crashed), not at each checkpoint: an index on steps would add a page write to every
    # step's commit. Without it every run start read the whole table, and so did every
    # per-workflow view (at a million steps, 100 ms per durable cell). Steps of runs not yet
    # indexed are found from runs.first_step, the first id their steps can have.
    """
    ALTER TABLE runs ADD COLUMN first_step INTEGER;
    ALTER TABLE runs ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE workflow_steps (
        workflow      TEXT NOT NULL,
        step          INTEGER NOT NULL,
        PRIMARY KEY (workflow, step)
    ) WITHOUT ROWID;
    INSERT INTO workflow_steps SELECT workflow, id FROM steps;
    UPDATE runs SET indexed = 1;
    """,
    # 7: what a step showed besides stdout, in order, as JSON events for replay:
    # [["stdout" | "stderr", text] | ["display", {mime: data}, metadata], ...]
    # (NULL when it only printed to stdout: then the stdout column is the whole of it).
    """
    ALTER TABLE steps ADD COLUMN output TEXT;
    """,
    # 8: experiments as data (see ``documents``): a call's arguments by parameter name and
    # its result's fields, as JSON written at checkpoint time (never unpickled to be read).
    """
    ALTER TABLE steps ADD COLUMN params TEXT;
    ALTER TABLE steps ADD COLUMN metrics TEXT;
    """,
    # 9: for cell skip, what the user's modules a cell imports held when it ended, as JSON
    # {module: {label: digest}}: a skip restores only if each is so again.
    """
    ALTER TABLE cells ADD COLUMN modules TEXT;
    """,
    # 10: signed values (``signing``): a keyed BLAKE2b of each stored result (its format and
    # bytes, or its blob's digest) and of each saved cell state; nothing unsigned is unpickled.
    """
    ALTER TABLE steps ADD COLUMN signature BLOB;
    ALTER TABLE cells ADD COLUMN signature BLOB;
    """,
    # 11: checkpoints inside a step (``checkpoint()`` / ``last_checkpoint()``). The state a
    # call may resume lives in checkpoint_states, one row per call (keyed like its step rows,
    # and one more for the state a completed call kept with keep_checkpoints):
    # a new checkpoint replaces it in one statement, which also appends its history row
    # (time, metrics: kept after the state is dropped) to checkpoints. done: the call
    # completed and keep_checkpoints kept its state (never resumed).
    f"""
    CREATE TABLE checkpoint_states (
        id            INTEGER PRIMARY KEY,
        workflow      TEXT NOT NULL,
        scope         TEXT NOT NULL,
        name          TEXT NOT NULL,
        args_digest   TEXT NOT NULL,
        occurrence    INTEGER NOT NULL,
        done          INTEGER NOT NULL DEFAULT 0,
        run_id        INTEGER NOT NULL,
        code_digest   TEXT NOT NULL,          -- the call's dependency digest
        attempt       INTEGER NOT NULL,
        seq           INTEGER NOT NULL,       -- its number in the call
        started_at    REAL NOT NULL,          -- when the attempt started
        created_at    REAL NOT NULL,
        args_repr     TEXT NOT NULL,
        params        TEXT,
        state_format  TEXT NOT NULL,
        state_blob    TEXT,
        state_size    INTEGER NOT NULL,
        metrics       TEXT,
        signature     BLOB,
        keep          INTEGER NOT NULL DEFAULT 0,  -- @step(keep_checkpoints=True)
        state         BLOB,    -- last: a large inline state is read only when asked for
        -- a running call's state (done = 0), and the one a completed call kept (done = 1)
        UNIQUE (workflow, name, args_digest, scope, occurrence, done)
    );
    CREATE TABLE checkpoints (
        id            INTEGER PRIMARY KEY,
        run_id        INTEGER NOT NULL,
        workflow      TEXT NOT NULL,
        scope         TEXT NOT NULL,
        name          TEXT NOT NULL,
        args_digest   TEXT NOT NULL,
        occurrence    INTEGER NOT NULL,
        code_digest   TEXT NOT NULL,
        attempt       INTEGER NOT NULL,
        seq           INTEGER NOT NULL,
        started_at    REAL NOT NULL,
        created_at    REAL NOT NULL,
        args_repr     TEXT NOT NULL,
        params        TEXT,
        state_size    INTEGER NOT NULL,
        metrics       TEXT
    );
    CREATE TRIGGER checkpoint_history AFTER INSERT ON checkpoint_states BEGIN
        {_CHECKPOINT_HISTORY}
    END;
    CREATE TRIGGER checkpoint_history_next AFTER UPDATE OF seq ON checkpoint_states BEGIN
        {_CHECKPOINT_HISTORY}
    END;
    DROP VIEW events;
    {_EVENTS_VIEW_11}
    """,
]

SIGNED = 10
"""The first schema with signed values: an older log of the user's own is signed on upgrade."""

SCHEMA_VERSION = len(MIGRATIONS)
