//! The OpenAPI document of the HTTP API, served at `/api/v1/openapi.json`.

/// The document (OpenAPI 3.1, JSON).
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document is checked against the routes and error codes `http.rs` really has, so that the
/// two cannot drift apart unnoticed.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    /// The source that registers the routes.
    const HTTP_RS: &str = include_str!("http.rs");

    /// The method routers axum offers for the methods the API uses.
    const ROUTER_METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

    /// The keys of an OpenAPI path item that are operations.
    const OPERATION_KEYS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// A (method, path) pair, e.g. `("get", "/api/v1/jobs/{id}")`.
    type Route = (String, String);

    fn document() -> Value {
        serde_json::from_str(super::DOCUMENT).expect("openapi.json is not valid JSON")
    }

    /// `http.rs` without its comment lines and its tests.
    fn http_code() -> String {
        let code = HTTP_RS.split("#[cfg(test)]").next().unwrap_or_default();
        code.lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn is_ident(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b == b'_'
    }

    /// The string literal `s` starts with (after white space), without escapes, and the text
    /// after it.
    fn string_literal(s: &str) -> Option<(String, &str)> {
        let s = s.trim_start().strip_prefix('"')?;
        let end = s.find('"')?;
        Some((s[..end].to_owned(), &s[end + 1..]))
    }

    /// Reads the method router that follows a route's path, up to the `)` that closes
    /// `.route(`: the methods chained at its top level (`get(a).post(b)`, over any line breaks),
    /// and the text after it.
    fn method_router(s: &str) -> (Vec<String>, &str) {
        let bytes = s.as_bytes();
        let mut methods = Vec::new();
        let mut depth = 0usize;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                }
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    if depth == 0 {
                        return (methods, &s[i + 1..]);
                    }
                    depth -= 1;
                }
                b if is_ident(b) => {
                    // A whole word at once, so that `get_blob` is not taken for `get`.
                    let start = i;
                    while i + 1 < bytes.len() && is_ident(bytes[i + 1]) {
                        i += 1;
                    }
                    let word = &s[start..=i];
                    if depth == 0
                        && bytes.get(i + 1) == Some(&b'(')
                        && ROUTER_METHODS.contains(&word)
                    {
                        methods.push(word.to_owned());
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("a .route( call is not closed");
    }

    /// Every (method, path) that `.route(PATH, METHODS)` calls in `code` register.
    fn routes_in(code: &str) -> BTreeSet<Route> {
        let mut routes = BTreeSet::new();
        let mut rest = code;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let (path, after) = string_literal(rest).unwrap_or_else(|| {
                panic!(
                    "a .route( call whose path is not a string literal: {}",
                    rest.lines().next().unwrap_or_default()
                )
            });
            let (methods, after) = method_router(after);
            assert!(
                !methods.is_empty(),
                "route {path}: no get/post/put/patch/delete chained on it"
            );
            for method in methods {
                routes.insert((method, path.clone()));
            }
            rest = after;
        }
        routes
    }

    /// Every (method, path) the document has an operation for.
    fn documented_routes(doc: &Value) -> BTreeSet<Route> {
        let mut routes = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths is an object") {
            for key in item.as_object().expect("a path item is an object").keys() {
                if OPERATION_KEYS.contains(&key.as_str()) {
                    routes.insert((key.clone(), path.clone()));
                }
            }
        }
        routes
    }

    /// Every operation of the document, with its method and path.
    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths is an object") {
            for (key, op) in item.as_object().expect("a path item is an object") {
                if OPERATION_KEYS.contains(&key.as_str()) {
                    ops.push((key.clone(), path.clone(), op));
                }
            }
        }
        ops
    }

    /// `v` itself, or what its `$ref` points to.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => doc
                .pointer(r.strip_prefix('#').unwrap_or(r))
                .unwrap_or_else(|| panic!("{r} does not resolve")),
            None => v,
        }
    }

    /// Every reference in `v`: `$ref`s and discriminator mappings.
    fn references(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        ("discriminator", d) => {
                            if let Some(mapping) = d.get("mapping").and_then(Value::as_object) {
                                out.extend(
                                    mapping.values().filter_map(Value::as_str).map(String::from),
                                );
                            }
                        }
                        _ => references(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }

    /// The error codes `http.rs` answers with: the string literal right after each
    /// `StatusCode::NAME,` (as in `ApiError::new(StatusCode::NOT_FOUND, "not_found", ...)`).
    fn error_codes_in(code: &str) -> BTreeSet<String> {
        let mut codes = BTreeSet::new();
        let mut rest = code;
        while let Some(at) = rest.find("StatusCode::") {
            rest = &rest[at + "StatusCode::".len()..];
            let name = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if let Some(after) = rest[name..].trim_start().strip_prefix(',')
                && let Some((code, _)) = string_literal(after)
            {
                codes.insert(code);
            }
        }
        codes
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_version() {
        let doc = document();
        let version = doc["openapi"].as_str().expect("openapi is a string");
        assert!(version.starts_with("3.1"), "openapi is {version}");
        assert_eq!(
            doc["info"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION")),
            "info.version should be the coordinator's version"
        );
        assert!(
            doc["paths"].as_object().is_some_and(|p| !p.is_empty()),
            "the document has no paths"
        );
    }

    #[test]
    fn the_scanner_reads_routes_as_rustfmt_lays_them_out() {
        let code = r#"
            Router::new()
                .route("/a", get(get_blob))
                .route("/b/{x}", get(b).put(put_b))
                .route(
                    "/c/{x}",
                    post(drain_agent).delete(undrain_agent),
                )
                .route("/d", get(|| async { client.post(url) }))
                .layer(x)
        "#;
        let want: BTreeSet<Route> = [
            ("get", "/a"),
            ("get", "/b/{x}"),
            ("put", "/b/{x}"),
            ("post", "/c/{x}"),
            ("delete", "/c/{x}"),
            ("get", "/d"),
        ]
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
        assert_eq!(routes_in(code), want);
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let registered = routes_in(&http_code());
        assert!(
            registered.contains(&("get".to_owned(), "/api/v1/jobs/{id}".to_owned())),
            "the scanner found no GET /api/v1/jobs/{{id}} in http.rs: {registered:?}"
        );
        let documented = documented_routes(&document());
        let undocumented: Vec<&Route> = registered.difference(&documented).collect();
        let unregistered: Vec<&Route> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty() && unregistered.is_empty(),
            "routes in http.rs missing from openapi.json: {undocumented:?}; \
             routes in openapi.json not registered in http.rs: {unregistered:?}"
        );
    }

    #[test]
    fn path_parameters_match_the_paths() {
        let doc = document();
        for (method, path, op) in operations(&doc) {
            let in_path: BTreeSet<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let shared = doc["paths"][&path]["parameters"].as_array();
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .chain(shared)
                .flatten()
                .map(|p| resolve(&doc, p))
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().expect("a parameter has a name"))
                .collect();
            assert_eq!(in_path, declared, "{method} {path}: path parameters");
        }
    }

    #[test]
    fn every_reference_resolves_and_every_component_is_used() {
        let doc = document();
        let mut refs = Vec::new();
        references(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in &refs {
            assert!(
                r.starts_with("#/components/"),
                "{r} does not point into components"
            );
            assert!(doc.pointer(&r[1..]).is_some(), "{r} does not resolve");
        }
        let used: BTreeSet<&str> = refs.iter().map(String::as_str).collect();
        for kind in ["schemas", "parameters", "responses"] {
            for name in doc["components"][kind].as_object().into_iter().flatten() {
                let r = format!("#/components/{kind}/{}", name.0);
                assert!(used.contains(r.as_str()), "{r} is never used");
            }
        }
    }

    #[test]
    fn every_operation_is_named_succeeds_somehow_and_fails_with_the_error_body() {
        let doc = document();
        let tags: BTreeSet<&str> = doc["tags"]
            .as_array()
            .expect("tags are declared")
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        let error = json!({"$ref": "#/components/schemas/Error"});
        let mut ids = BTreeSet::new();
        for (method, path, op) in operations(&doc) {
            let what = format!("{method} {path}");
            let id = op["operationId"]
                .as_str()
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| panic!("{what}: no operationId"));
            assert!(ids.insert(id), "{what}: operationId {id} is used twice");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{what}: no summary"
            );
            let op_tags = op["tags"].as_array().map(Vec::as_slice).unwrap_or_default();
            assert!(!op_tags.is_empty(), "{what}: no tags");
            for t in op_tags {
                let t = t.as_str().unwrap_or_default();
                assert!(tags.contains(t), "{what}: tag {t:?} is not declared");
            }
            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: no responses"));
            assert!(
                responses.keys().any(|code| code.starts_with('2')),
                "{what}: no 2xx response"
            );
            for (code, response) in responses {
                if code.starts_with('2') {
                    continue;
                }
                let response = resolve(&doc, response);
                if let Some(schema) = response.pointer("/content/application~1json/schema") {
                    assert_eq!(schema, &error, "{what}: the {code} JSON body is not Error");
                }
            }
            // The global security applies unless the operation says otherwise; a route that
            // needs a token can be refused for the lack of one.
            let needs_token = op.get("security").is_none_or(|s| s != &json!([]));
            assert_eq!(
                responses.contains_key("401"),
                needs_token,
                "{what}: a 401 answer goes with needing a token"
            );
        }
    }

    #[test]
    fn the_error_codes_are_those_http_rs_answers_with() {
        let doc = document();
        let documented: BTreeSet<String> = doc
            .pointer("/components/schemas/Error/properties/error/properties/code/enum")
            .and_then(Value::as_array)
            .expect("Error.error.code has an enum")
            .iter()
            .filter_map(|c| c.as_str().map(String::from))
            .collect();
        let used = error_codes_in(&http_code());
        assert!(
            used.contains("not_found"),
            "the scanner found no codes: {used:?}"
        );
        assert_eq!(
            documented, used,
            "Error codes: documented vs used in http.rs"
        );
    }
}
