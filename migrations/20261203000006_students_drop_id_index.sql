-- Student pages now walk the (school_id, external_reference_id) unique index
-- (cursor = the last externalReferenceId), so the second index on the random
-- UUIDv4 ids goes: every insert touched a random leaf of it, and after each
-- checkpoint that meant a full-page write per leaf — the main cost of creating
-- students in a school that already has a million (issue #3). The primary key
-- still serves lookups by id.
-- Compatible with the running release: its pages (ordered by id) stay correct,
-- served by the primary key. DROP INDEX takes a brief ACCESS EXCLUSIVE lock on
-- students, after the transactions in flight.
DROP INDEX IF EXISTS students_school_id;
