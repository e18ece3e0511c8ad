//! `ferry serve` through real HTTP on 127.0.0.1, against a real S3 server
//! and the real pipeline. One module per behaviour; [`harness`] starts a
//! service over the demo site.

mod harness;

mod access;
mod auth;
mod browser;
mod documents;
mod download;
mod health;
mod hostile_files;
mod image_preview;
mod listing;
mod load;
mod logs;
mod openapi;
mod problems;
mod records;
mod requests;
mod schemathesis;
mod search;
mod sync;
mod upload_to_platform;
