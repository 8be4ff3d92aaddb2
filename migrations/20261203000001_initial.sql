-- Schools, their API keys (hashes only), students, jobs and the credentials outbox.

CREATE TABLE schools (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    school_id   uuid NOT NULL REFERENCES schools (id) ON DELETE CASCADE,
    -- SHA-256 of the full key: keys are 256-bit random, so a fast hash is enough
    -- and lets the lookup be a unique index probe.
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_school ON api_keys (school_id);

CREATE TABLE students (
    id                        uuid PRIMARY KEY,
    school_id                 uuid NOT NULL REFERENCES schools (id) ON DELETE CASCADE,
    external_reference_id     text NOT NULL,
    external_reference_type   text,
    first_name                text NOT NULL,
    last_name                 text NOT NULL,
    email                     text,
    phone                     text,
    photo_url                 text,
    file_number               text,
    curriculum_name           text,
    company                   text,
    badge_id                  text,
    tags                      text[],
    archived                  boolean NOT NULL DEFAULT false,
    password_change_required  boolean NOT NULL DEFAULT false,
    password_hash             text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT students_school_external_ref UNIQUE (school_id, external_reference_id)
);
-- Cursor pagination walks (school_id, id).
CREATE INDEX students_school_id ON students (school_id, id);

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    school_id         uuid NOT NULL REFERENCES schools (id) ON DELETE CASCADE,
    status            text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    dry_run           boolean NOT NULL,
    total             integer NOT NULL,
    idempotency_key   text,
    body_fingerprint  bytea NOT NULL,
    summary           jsonb,
    results           jsonb,
    error             jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    expires_at        timestamptz,
    CONSTRAINT jobs_idempotency UNIQUE (school_id, idempotency_key)
);
CREATE INDEX jobs_school_created ON jobs (school_id, created_at DESC, id DESC);

-- Transactional outbox: one row per credentials email, written in the same
-- transaction as the student it belongs to.
CREATE TABLE credential_emails (
    id            uuid PRIMARY KEY,
    school_id     uuid NOT NULL REFERENCES schools (id) ON DELETE CASCADE,
    student_id    uuid NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    job_id        uuid NOT NULL,
    email         text NOT NULL,
    new_password_needed boolean NOT NULL,
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    CONSTRAINT credential_emails_one_per_student UNIQUE (student_id)
);
CREATE INDEX credential_emails_pending ON credential_emails (next_attempt_at) WHERE status = 'queued';
