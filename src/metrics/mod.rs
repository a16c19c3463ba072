//! preforkd's own metrics: `GET /metrics` on `metrics_listen` (or a socket systemd passes
//! with `FileDescriptorName=metrics`), in the Prometheus text format. [`server`] speaks HTTP
//! from the event loop without blocking it; [`render`] writes the page from a status snapshot.
//! Nothing is measured ahead of a scrape: an idle preforkd with metrics enabled still does not
//! wake up.

pub mod render;
pub mod server;

pub use render::render;
pub use server::MetricsServer;
