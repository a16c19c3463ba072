//! Routing and responses: what each path answers, as pure functions of the request.
//!
//! Nothing here touches a socket, so every route is tested without one. `/env` and `/crash` are
//! offered only when the worker was started with `--debug-routes`: the packaged demo should show
//! no environment and be impossible to end with a request.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use super::request::parse_decimal;

/// Bound on `/sleep?ms=`, so a request cannot hold a connection (and a drain) for hours.
pub const MAX_SLEEP_MS: u64 = 600_000;

/// Who this worker is, as reported in response bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub generation: String,
    pub pid: u32,
}

impl Identity {
    pub fn from_env(env: &HashMap<OsString, OsString>) -> Self {
        let var = |name: &str| {
            env.get(OsStr::new(name))
                .map_or_else(|| "?".to_owned(), |v| v.to_string_lossy().into_owned())
        };
        Identity {
            id: var("PREFORKD_WORKER_ID"),
            generation: var("PREFORKD_GENERATION"),
            pid: std::process::id(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            body: body.into(),
        }
    }

    pub fn error(status: u16) -> Self {
        Response::new(status, format!("{}\n", reason(status).to_ascii_lowercase()))
    }

    fn bad_request(why: &str) -> Self {
        Response::new(400, format!("bad request: {why}\n"))
    }
}

/// What a request asks the worker to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Reply(Response),
    /// Sleep this many milliseconds (already capped), then answer.
    Sleep(u64),
    Crash,
}

/// `env` is the start-up environment when the debug routes (/env, /crash) are on.
pub fn route(
    method: &str,
    target: &str,
    identity: &Identity,
    env: Option<&HashMap<OsString, OsString>>,
) -> Route {
    if method != "GET" && method != "HEAD" {
        return Route::Reply(Response::new(405, "method not allowed\n"));
    }
    let (path, query) = split_target(target);
    match (path, env) {
        ("/", _) => {
            let Identity {
                id,
                generation,
                pid,
            } = identity;
            Route::Reply(Response::new(
                200,
                format!("worker={id} pid={pid} gen={generation}\n"),
            ))
        }
        ("/sleep", _) => sleep_route(query),
        ("/health", _) => Route::Reply(Response::new(200, "ok\n")),
        ("/env", Some(env)) => Route::Reply(env_reply(query, env)),
        ("/crash", Some(_)) => Route::Crash,
        _ => Route::Reply(Response::new(404, "not found\n")),
    }
}

fn sleep_route(query: &str) -> Route {
    match query_param(query, "ms") {
        Some(Some(ms)) => match parse_decimal(&ms) {
            Some(ms) => Route::Sleep(ms.min(MAX_SLEEP_MS)),
            None => Route::Reply(Response::bad_request(
                "ms must be a whole number of milliseconds",
            )),
        },
        Some(None) => Route::Reply(Response::bad_request("missing ?ms=N")),
        None => Route::Reply(Response::bad_request("bad percent-encoding")),
    }
}

fn env_reply(query: &str, env: &HashMap<OsString, OsString>) -> Response {
    let name = match query_param(query, "name") {
        Some(Some(name)) if !name.is_empty() => name,
        Some(_) => return Response::bad_request("missing ?name=VARIABLE"),
        None => return Response::bad_request("bad percent-encoding"),
    };
    match env.get(OsStr::from_bytes(&name)) {
        Some(value) => {
            let mut body = value.as_bytes().to_vec();
            body.push(b'\n');
            Response::new(200, body)
        }
        None => Response::new(404, "unset\n"),
    }
}

/// Splits a request target into path and query, accepting the absolute
/// form (`http://host/path?q`) that HTTP/1.1 servers must understand.
fn split_target(target: &str) -> (&str, &str) {
    let origin = strip_authority(target);
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    (if path.is_empty() { "/" } else { path }, query)
}

fn strip_authority(target: &str) -> &str {
    for scheme in ["http://", "https://"] {
        let matches = target
            .get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme));
        if let (true, Some(rest)) = (matches, target.get(scheme.len()..)) {
            return rest
                .find(['/', '?'])
                .and_then(|at| rest.get(at..))
                .unwrap_or("");
        }
    }
    target
}

/// The percent-decoded value of `key` in a query string: Some(None) when
/// absent, None when the encoding is broken. `+` is kept literally: only
/// HTML forms use it for a space.
fn query_param(query: &str, key: &str) -> Option<Option<Vec<u8>>> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(name)? == key.as_bytes() {
            return Some(Some(percent_decode(value)?));
        }
    }
    Some(None)
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = char::from(bytes.next()?).to_digit(16)?;
            let lo = char::from(bytes.next()?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serializes a response; `head_only` leaves out the body (HEAD requests)
/// but keeps the length it would have had.
pub fn render_response(response: &Response, head_only: bool, keep_alive: bool) -> Vec<u8> {
    let status = response.status;
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        reason(status),
        response.body.len()
    );
    if status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    bytes
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    // ---- queries ----

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%41b").as_deref(), Some(&b"aAb"[..]));
        assert_eq!(percent_decode("%e2%82%AC").as_deref(), Some("€".as_bytes()));
        assert_eq!(percent_decode("a+b").as_deref(), Some(&b"a+b"[..]));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%"), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("ms=5", "ms"), Some(Some(b"5".to_vec())));
        assert_eq!(
            query_param("a=1&ms=7&ms=8", "ms"),
            Some(Some(b"7".to_vec()))
        );
        assert_eq!(query_param("%6Ds=9", "ms"), Some(Some(b"9".to_vec())));
        assert_eq!(query_param("ms", "ms"), Some(Some(Vec::new())));
        assert_eq!(query_param("", "ms"), Some(None));
        assert_eq!(query_param("msx=1", "ms"), Some(None));
        assert_eq!(query_param("ms=%g1", "ms"), None);
    }

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target("/"), ("/", ""));
        assert_eq!(split_target("/env?name=X"), ("/env", "name=X"));
        assert_eq!(
            split_target("http://host:8080/sleep?ms=1"),
            ("/sleep", "ms=1")
        );
        assert_eq!(split_target("HTTP://host"), ("/", ""));
        assert_eq!(split_target("http://host?q=1"), ("/", "q=1"));
    }

    // ---- routing ----

    fn identity() -> Identity {
        Identity {
            id: "4".into(),
            generation: "2".into(),
            pid: 1234,
        }
    }

    fn env() -> HashMap<OsString, OsString> {
        [("LISTEN_PID", "1234"), ("A B", "spaced"), ("EMPTY", "")]
            .into_iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn reply(method: &str, target: &str) -> Response {
        match route(method, target, &identity(), Some(&env())) {
            Route::Reply(response) => response,
            other => panic!("{method} {target}: expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(
            reply("GET", "/"),
            Response::new(200, "worker=4 pid=1234 gen=2\n")
        );
        assert_eq!(reply("HEAD", "/?x=1").status, 200);
        assert_eq!(reply("GET", "/nope"), Response::new(404, "not found\n"));
        assert_eq!(reply("POST", "/").status, 405);
        assert_eq!(reply("get", "/").status, 405);
        assert_eq!(
            route("GET", "/crash", &identity(), Some(&env())),
            Route::Crash
        );
        assert_eq!(reply("GET", "/health"), Response::new(200, "ok\n"));
        // Without the debug routes, neither the environment nor a crash is on offer.
        for target in ["/env?name=PATH", "/crash"] {
            let off = route("GET", target, &identity(), None);
            assert_eq!(
                off,
                Route::Reply(Response::new(404, "not found\n")),
                "{target}"
            );
        }
    }

    #[test]
    fn sleep_route_parses_and_caps() {
        let sleep = |target| route("GET", target, &identity(), Some(&env()));
        assert_eq!(sleep("/sleep?ms=250"), Route::Sleep(250));
        assert_eq!(sleep("/sleep?ms=0"), Route::Sleep(0));
        assert_eq!(sleep("/sleep?ms=999999999"), Route::Sleep(MAX_SLEEP_MS));
        for bad in [
            "/sleep",
            "/sleep?ms=",
            "/sleep?ms=-1",
            "/sleep?ms=1.5",
            "/sleep?ms=%zz",
            "/sleep?ms=99999999999999999999",
        ] {
            assert!(
                matches!(sleep(bad), Route::Reply(Response { status: 400, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn env_route_uses_snapshot() {
        assert_eq!(
            reply("GET", "/env?name=LISTEN_PID"),
            Response::new(200, "1234\n")
        );
        assert_eq!(
            reply("GET", "/env?name=A%20B"),
            Response::new(200, "spaced\n")
        );
        assert_eq!(reply("GET", "/env?name=EMPTY"), Response::new(200, "\n"));
        assert_eq!(
            reply("GET", "/env?name=NOPE"),
            Response::new(404, "unset\n")
        );
        assert_eq!(reply("GET", "/env").status, 400);
        assert_eq!(reply("GET", "/env?name=").status, 400);
        assert_eq!(reply("GET", "/env?name=%").status, 400);
    }

    #[test]
    fn identity_defaults_to_question_marks() {
        let id = Identity::from_env(&HashMap::new());
        assert_eq!((id.id.as_str(), id.generation.as_str()), ("?", "?"));
    }

    // ---- responses ----

    #[test]
    fn renders_responses() {
        let ok = Response::new(200, "hi\n");
        assert_eq!(
            String::from_utf8_lossy(&render_response(&ok, false, true)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nhi\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&render_response(&ok, true, false)),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let not_allowed =
            String::from_utf8_lossy(&render_response(&reply("PUT", "/"), false, true)).into_owned();
        assert!(not_allowed.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(not_allowed.contains("\r\nAllow: GET, HEAD\r\n"));
        let too_big =
            String::from_utf8_lossy(&render_response(&Response::error(431), false, false))
                .into_owned();
        assert!(too_big.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(too_big.ends_with("Connection: close\r\n\r\nrequest header fields too large\n"));
    }
}
