-- A job row with an Idempotency-Key is recorded before its batch is published;
-- `published` turns true once the broker has confirmed the message (a job
-- without a key is recorded as published: no other request can attach to it).
-- An Idempotency-Key replay only attaches to a published job (so its 202 is
-- never given for a batch whose publish then fails), and a request may take
-- over the key of a job that stayed unpublished for a while (the request that
-- recorded it died before publishing).
-- Rows written by an earlier release default to true: it kept a job row only
-- once its batch was published (or deleted it), so they are all published.
ALTER TABLE jobs ADD COLUMN published boolean NOT NULL DEFAULT true;
