-- The credentials mailer: reading a job's email states, the per-school hourly
-- cap, and when the last attempt was made. Additive only (the running api and
-- worker of the previous release keep working).

-- Overlaying the live email state on a job's results reads by job.
CREATE INDEX credential_emails_job ON credential_emails (job_id);

-- The per-school cap counts the emails sent in the last hour.
CREATE INDEX credential_emails_school_sent ON credential_emails (school_id, sent_at)
    WHERE status = 'sent';

ALTER TABLE credential_emails ADD COLUMN last_attempt_at timestamptz;
