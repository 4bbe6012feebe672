-- How far the history mirror has copied each cogward workflow it follows (runs, approvals, and
-- the workflow kinds to come): the last mirrored event id, and whether its history is closed and
-- fully copied. A run's row is written with the run; a child workflow's (an approval) in the
-- same transaction as the parent's event that started it. Was `runs.mirrored_event_id` and
-- `runs.mirror_done`, for runs only.
CREATE TABLE mirror_cursors (
    workflow_id       TEXT   PRIMARY KEY,
    workflow_type     TEXT   NOT NULL,
    temporal_run_id   TEXT   NOT NULL DEFAULT '',
    mirrored_event_id BIGINT NOT NULL DEFAULT 0,
    done              BIGINT NOT NULL DEFAULT 0,
    created_at        TEXT   NOT NULL
);
CREATE INDEX mirror_cursors_open ON mirror_cursors (done, created_at);

INSERT INTO mirror_cursors (workflow_id, workflow_type, temporal_run_id, mirrored_event_id, done,
                            created_at)
    SELECT run_id, 'AgentRun', COALESCE(temporal_run_id, ''), mirrored_event_id, mirror_done,
           created_at
    FROM runs;

DROP INDEX runs_mirror_pending;
ALTER TABLE runs DROP COLUMN mirrored_event_id;
ALTER TABLE runs DROP COLUMN mirror_done;
