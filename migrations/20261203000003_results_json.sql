-- Job results as `json` (the text, kept verbatim) instead of `jsonb`: jsonb
-- cannot hold the escape \u0000, and results echo what clients sent (an invalid
-- externalReferenceId containing NUL, the pointer to an unknown field whose name
-- contains one). With jsonb such a batch failed on every delivery.
-- Compatible with the running release: it binds jsonb, which casts to json on
-- assignment, and it decodes json like jsonb. Results are only ever read whole.
ALTER TABLE jobs ALTER COLUMN results TYPE json USING results::json;
