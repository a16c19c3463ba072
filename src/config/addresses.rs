//! Addresses preforkd binds: the workers' `listen` sockets and its own `metrics_listen`.

use std::net::SocketAddr;
use std::path::Path;

use super::kinds::{quote, Scalar};
use super::types::ListenAddr;

/// The longest path a unix socket address holds (`sun_path`, less its NUL).
const MAX_UNIX_PATH: usize = 107;

impl Scalar for ListenAddr {
    type Field = ListenAddr;
    const EXPECTED: &'static str = "an address such as \"127.0.0.1:8080\", \"[::1]:8080\", \"0.0.0.0:80\" or \"unix:/run/app.sock\"";
    fn from_text(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = Path::new(path);
            if !path.is_absolute() {
                return Err(format!(
                    "invalid listen address \"{s}\": a unix socket path must be absolute, like \"unix:/run/app.sock\""
                ));
            }
            // sun_path holds 108 bytes with the terminating NUL: `run` could not bind a longer one.
            let len = path.as_os_str().len();
            if len > MAX_UNIX_PATH {
                return Err(format!(
                    "invalid listen address \"{s}\": the socket path is {len} bytes long, the kernel takes at most {MAX_UNIX_PATH}; use a shorter path"
                ));
            }
            return Ok(ListenAddr::Unix(path.to_owned()));
        }
        match s.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => Err(format!(
                "invalid listen address \"{s}\": port 0 would pick a random port; name the port"
            )),
            Ok(addr) => Ok(ListenAddr::Tcp(addr)),
            Err(_) => match port_out_of_range(s) {
                // The address quoted before is cut when long; the port must be too.
                Some(port) if port.len() > 10 => Err(format!(
                    "invalid listen address \"{s}\": the port is out of range; a port is 1–65535"
                )),
                Some(port) => Err(format!(
                    "invalid listen address \"{s}\": port {port} is out of range; a port is 1–65535"
                )),
                None => Err(format!(
                    "invalid listen address \"{s}\": expected {}",
                    Self::EXPECTED
                )),
            },
        }
    }
    fn show(a: &ListenAddr) -> Option<String> {
        Some(quote(&a.to_string()))
    }
}

/// The port of `s` when `s` is a good address but for a port number too big for 16 bits
/// ("127.0.0.1:70000"): that deserves its own words rather than "expected an address".
fn port_out_of_range(s: &str) -> Option<&str> {
    let (host, port) = s.rsplit_once(':')?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    (digits && format!("{host}:1").parse::<SocketAddr>().is_ok()).then_some(port)
}

/// `metrics_listen`: an address as `listen` takes it, or "off".
pub(crate) struct MetricsListen;

impl Scalar for MetricsListen {
    type Field = Option<ListenAddr>;
    const EXPECTED: &'static str =
        "\"off\" or an address such as \"127.0.0.1:9464\" or \"unix:/run/myapp/metrics.sock\"";
    fn from_text(s: &str) -> Result<Option<ListenAddr>, String> {
        if s == "off" {
            return Ok(None);
        }
        ListenAddr::from_text(s).map(Some)
    }
    fn show(a: &Option<ListenAddr>) -> Option<String> {
        Some(quote(
            &a.as_ref().map_or("off".to_owned(), ToString::to_string),
        ))
    }
}
