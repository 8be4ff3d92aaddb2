//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the types' `ToSchema` derives. A modifier adds what every
//! operation of a kind shares: the security schemes, 401 / 429 / 500 / 503
//! answers, the rate-limit headers, and the service-wide description; and what
//! the attributes cannot say: the `Idempotency-Key` header's constraints and
//! the links from a response to the operations that take its ids (so that
//! clients and generators such as schemathesis can follow them).

use std::sync::OnceLock;

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi as Document, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::PROBLEM_JSON;
use crate::routes;

const DESCRIPTION: &str = r#"Synchronise a school's students from its information system: batch upserts processed asynchronously by workers, job results, student reads.

**Authentication.** `Authorization: Bearer <apiKey>`; each key belongs to one school and every read and write is scoped to it. Another school's student or job is answered like one that does not exist (404). Admin endpoints take `Bearer $ADMIN_TOKEN` and answer 404 while the service has no admin token configured.

**Errors.** Every error answer is `application/problem+json` (RFC 9457) with `type`, `title`, `status`, `detail` and a stable snake_case `code`; validation problems add `errors: [{code, pointer, detail}]` with RFC 6901 pointers into the request body. `type` is the relative URI reference `/problems/<code>`. Codes: `malformed_json` (400), `unauthorized` (401, with `WWW-Authenticate: Bearer`), `not_found` (404, also for unknown routes and ids that are not UUIDs), `method_not_allowed` (405), `payload_too_large` (413, bodies over 5 MiB), `unsupported_media_type` (415; `application/json` and `application/*+json` are accepted), `invalid_request`, `batch_empty`, `batch_too_large`, `idempotency_key_reused` (422), `rate_limited` (429), `internal` (500), `job_failed` (500: a batch that could not be processed at all; the problem carries the job's `detail` and a `jobId` member), `unavailable` (503, with `Retry-After`: the queue, the database or another dependency cannot take the request; nothing was enqueued or written).

**Rate limits.** Per API key and shared by every instance: a key may send `RATE_LIMIT_BURST` requests at once (default 60), refilled at `RATE_LIMIT_PER_MINUTE` per minute (default 300; GCRA). Every authenticated answer carries `RateLimit-Policy: "default";q=<per minute>;w=60` and `RateLimit: "default";r=<remaining>;t=<seconds until the allowance is full again>`; a 429 also carries `Retry-After` (seconds until one more request is allowed). Batch upserts also count their students (every item, valid or not; a replay of a live Idempotency-Key is free) against a budget per school, shared by all its keys: `SCHOOL_STUDENTS_PER_MINUTE` (default 60000) per minute, a minute's worth (at least 1000) at once; a batch over it is refused whole with 429 `rate_limited`, a `Retry-After` after which that batch fits, and a second member `"school";q=<students per minute>;w=60` / `"school";r=<students remaining>;t=<seconds>` in `RateLimit-Policy` / `RateLimit`. The limiter fails open: while its store (Redis) cannot be reached, requests are not limited and `RateLimit` reports the full allowance (`r=<burst>;t=0`).

**Lists.** `limit` is 1–500 (default 100); `nextCursor` is an opaque URL-safe string, `null` on the last page. A query parameter given twice is 422 `invalid_request`; unknown query parameters are ignored.

**Waiting.** Batch upserts wait for their job unless `Prefer: respond-async` is sent; see the operation. A server that is shutting down stops waiting and answers 202 at once. Requests taking longer than 75 s are cut off with 503 `unavailable`."#;

#[derive(OpenApi)]
#[openapi(
    info(title = "Student Sync API"),
    paths(
        routes::batch::batch_upsert,
        routes::jobs::get_job,
        routes::jobs::list_jobs,
        routes::students::get_student,
        routes::students::list_students,
        routes::students::archive_student,
        routes::students::unarchive_student,
        routes::admin::create_school,
        routes::admin::create_api_key,
        routes::admin::revoke_api_key,
        routes::ops::healthz,
        routes::ops::readyz,
        routes::ops::metrics,
        routes::ops::openapi,
    ),
    components(schemas(crate::error::Problem, crate::error::ProblemCode)),
    modifiers(&Shared),
    tags(
        (name = "students", description = "Batch upserts and student reads."),
        (name = "jobs", description = "The jobs batch upserts create."),
        (name = "admin", description = "Schools and API keys (`ADMIN_TOKEN`)."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
struct ApiDoc;

/// The OpenAPI document of the service (built once).
pub fn openapi() -> Document {
    static DOCUMENT: OnceLock<Document> = OnceLock::new();
    DOCUMENT.get_or_init(ApiDoc::openapi).clone()
}

/// Adds what operations share (see the module docs).
struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut Document) {
        openapi.info.description = Some(DESCRIPTION.to_string());
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A school's API key (`sk_…`)."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The service's `ADMIN_TOKEN`."))
                    .build(),
            ),
        );
        for (name, header) in [
            (
                "RateLimit-Policy",
                string_header("`\"default\";q=<requests per minute>;w=60`"),
            ),
            (
                "RateLimit",
                string_header(
                    "`\"default\";r=<remaining>;t=<seconds until the allowance is full again>`",
                ),
            ),
            (
                "Retry-After",
                integer_header("Seconds to wait before retrying."),
            ),
            ("WWW-Authenticate", string_header("`Bearer`")),
        ] {
            components
                .headers
                .insert(name.to_string(), RefOr::T(header));
        }

        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                if path.starts_with("/v3/admin/") {
                    admin_responses(operation);
                } else if path.starts_with("/v3/") {
                    school_responses(operation);
                }
                idempotency_key_schema(operation);
                add_links(operation);
            }
        }
    }
}

/// `Idempotency-Key`: 1 to 255 visible ASCII characters (a header value is
/// trimmed, so it neither starts nor ends with a space).
fn idempotency_key_schema(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        let RefOr::T(parameter) = parameter else {
            continue;
        };
        if parameter.name == "Idempotency-Key" {
            parameter.schema = Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(crate::routes::batch::MAX_IDEMPOTENCY_KEY_CHARS))
                    .pattern(Some("^[!-~]([ -~]*[!-~])?$"))
                    .into(),
            );
        }
    }
}

/// A link: (target operation id, its parameter, a runtime expression).
type LinkTo = (&'static str, &'static str, String);

/// Links (OpenAPI 3.1 §4.8.20) from answers to the operations taking their ids.
fn add_links(operation: &mut Operation) {
    let student = |expression: &str| {
        [
            ("getStudent", "studentId", expression.to_string()),
            ("archiveStudent", "studentId", expression.to_string()),
            ("unarchiveStudent", "studentId", expression.to_string()),
        ]
    };
    let links: Vec<(&str, Vec<LinkTo>)> =
        match operation.operation_id.as_deref().unwrap_or_default() {
            "batchUpsertStudents" => {
                let mut finished = vec![("getJob", "jobId", "$response.body#/jobId".to_string())];
                finished.extend(student("$response.body#/results/0/studentId"));
                vec![
                    ("200", finished.clone()),
                    ("207", finished),
                    (
                        "202",
                        vec![("getJob", "jobId", "$response.body#/jobId".to_string())],
                    ),
                ]
            }
            "getJob" => vec![("200", student("$response.body#/results/0/studentId").into())],
            "listJobs" => vec![(
                "200",
                vec![(
                    "getJob",
                    "jobId",
                    "$response.body#/jobs/0/jobId".to_string(),
                )],
            )],
            "listStudents" => vec![("200", student("$response.body#/students/0/id").into())],
            "getStudent" | "archiveStudent" | "unarchiveStudent" => {
                vec![("200", student("$response.body#/id").into())]
            }
            "createSchool" => vec![(
                "201",
                vec![(
                    "createApiKey",
                    "schoolId",
                    "$response.body#/schoolId".to_string(),
                )],
            )],
            "createApiKey" => vec![(
                "201",
                vec![(
                    "revokeApiKey",
                    "apiKeyId",
                    "$response.body#/apiKeyId".to_string(),
                )],
            )],
            _ => Vec::new(),
        };
    for (status, targets) in links {
        let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) else {
            continue;
        };
        for (target, parameter, expression) in targets {
            let link = LinkBuilder::new()
                .operation_id(target)
                .parameter(parameter, expression)
                .build();
            response.links.insert(target.to_string(), RefOr::T(link));
        }
    }
}

fn string_header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(description))
        .build()
}

fn integer_header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        ))
        .description(Some(description))
        .build()
}

fn header_ref(name: &str) -> RefOr<Header> {
    RefOr::Ref(Ref::new(format!("#/components/headers/{name}")))
}

fn problem(description: &str, headers: &[&str]) -> RefOr<Response> {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            Content::new(Some(Ref::from_schema_name("Problem"))),
        )
        .build();
    for name in headers {
        response.headers.insert(name.to_string(), header_ref(name));
    }
    RefOr::T(response)
}

/// Declares `status` unless the operation already does.
fn declare(operation: &mut Operation, status: &str, response: RefOr<Response>) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert(response);
}

fn school_responses(operation: &mut Operation) {
    // Every answer to an authenticated request carries the rate-limit headers.
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            for name in ["RateLimit-Policy", "RateLimit"] {
                response.headers.insert(name.to_string(), header_ref(name));
            }
        }
    }
    declare(
        operation,
        "401",
        problem(
            "`unauthorized`: the API key is missing, unknown or revoked.",
            &["WWW-Authenticate"],
        ),
    );
    declare(
        operation,
        "429",
        problem(
            "`rate_limited`: the key's rate limit is exhausted; retry after `Retry-After` seconds.",
            &["Retry-After", "RateLimit-Policy", "RateLimit"],
        ),
    );
    common_server_errors(operation);
}

fn admin_responses(operation: &mut Operation) {
    declare(
        operation,
        "401",
        problem(
            "`unauthorized`: the admin token is missing or wrong.",
            &["WWW-Authenticate"],
        ),
    );
    match operation.responses.responses.get_mut("404") {
        Some(RefOr::T(response)) => {
            response
                .description
                .push_str(" Also every admin route while no `ADMIN_TOKEN` is configured.");
        }
        _ => declare(
            operation,
            "404",
            problem(
                "`not_found`: no `ADMIN_TOKEN` is configured, so admin routes do not exist.",
                &[],
            ),
        ),
    }
    common_server_errors(operation);
}

fn common_server_errors(operation: &mut Operation) {
    declare(
        operation,
        "500",
        problem(
            "`internal`: an unexpected error (logged, never detailed).",
            &[],
        ),
    );
    declare(
        operation,
        "503",
        problem(
            "`unavailable`: a dependency (database, queue) cannot take the request; retry after `Retry-After` seconds.",
            &["Retry-After"],
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_documented_with_its_answers() {
        let document = serde_json::to_value(openapi()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let paths = &document["paths"];
        for (path, method, statuses) in [
            (
                "/v3/students/batch-upsert",
                "post",
                &[
                    "200", "202", "207", "400", "401", "413", "415", "422", "429", "500", "503",
                ][..],
            ),
            ("/v3/jobs/{jobId}", "get", &["200", "401", "404", "429"]),
            ("/v3/jobs", "get", &["200", "422"]),
            ("/v3/students", "get", &["200", "422"]),
            ("/v3/students/{studentId}", "get", &["200", "404"]),
            ("/v3/students/{studentId}/archive", "post", &["200", "404"]),
            (
                "/v3/students/{studentId}/unarchive",
                "post",
                &["200", "404"],
            ),
            ("/v3/admin/schools", "post", &["201", "401", "404", "422"]),
            (
                "/v3/admin/schools/{schoolId}/api-keys",
                "post",
                &["201", "401", "404"],
            ),
            (
                "/v3/admin/api-keys/{apiKeyId}",
                "delete",
                &["204", "401", "404"],
            ),
            ("/healthz", "get", &["200"]),
            ("/readyz", "get", &["200", "503"]),
            ("/metrics", "get", &["200"]),
            ("/openapi.json", "get", &["200"]),
        ] {
            let responses = &paths[path][method]["responses"];
            for status in statuses {
                assert!(
                    responses.get(*status).is_some(),
                    "{method} {path} lacks {status}"
                );
            }
        }
        let problem = &paths["/v3/students/batch-upsert"]["post"]["responses"]["422"]["content"];
        assert!(problem.get(PROBLEM_JSON).is_some());
        assert!(document["components"]["securitySchemes"]["apiKey"].is_object());
        assert!(document["components"]["schemas"]["JobView"].is_object());

        let batch = &paths["/v3/students/batch-upsert"]["post"];
        let link = &batch["responses"]["200"]["links"]["getStudent"];
        assert_eq!(link["operationId"], "getStudent");
        assert_eq!(
            link["parameters"]["studentId"],
            "$response.body#/results/0/studentId"
        );
        let key = batch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "Idempotency-Key")
            .unwrap();
        assert_eq!(key["schema"]["maxLength"], 255);
        // Every link names an operation that exists.
        let ids: Vec<&str> = paths
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|operation| operation["operationId"].as_str())
            .collect();
        for item in paths.as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                for response in operation["responses"].as_object().into_iter().flatten() {
                    for link in response.1["links"].as_object().into_iter().flatten() {
                        let target = link.1["operationId"].as_str().unwrap();
                        assert!(ids.contains(&target), "link to {target}");
                    }
                }
            }
        }
        // A page and a lookup are told apart.
        let schemas = &document["components"]["schemas"];
        assert_eq!(schemas["StudentLookup"]["additionalProperties"], false);
        assert!(
            schemas["StudentPage"]["required"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("nextCursor"))
        );
    }
}
