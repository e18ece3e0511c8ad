//! `ferry serve`: the pipeline on its schedule plus an HTTP service.
//!
//! (Being written: API in `api`, JWT auth in `auth`, previews in
//! `preview`, the web page in `web`.)

pub mod auth;
pub mod preview;
pub mod web;
