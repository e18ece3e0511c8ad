//! `ferry serve`: the pipeline on its schedule plus an HTTP service.
//!
//! (Being written: API in `api`, JWT auth in `auth`, previews in
//! `preview`, the web page in `web`.)

pub mod auth;
pub mod preview;
pub mod web;

/// Runs the pipeline on its schedule and serves HTTP until Ctrl-C.
pub async fn serve(
    pipeline: crate::config::Pipeline,
    listen: Option<String>,
    options: &crate::runtime::Options,
) -> anyhow::Result<()> {
    let _ = (pipeline, listen, options);
    anyhow::bail!("ferry serve is not available yet")
}
