//! End-to-end behaviour of pipelines, through the real host and the real
//! plugin components (`cargo xtask plugins` builds them; `cargo xtask test`
//! does that first). One module per behaviour.

mod harness;

mod check_refusals;
mod compile_cache;
mod contract_versions;
mod corrupt_input;
mod crash_recovery;
mod fhir_documents;
mod fhir_store;
mod folder_documents;
mod graceful_stop;
mod grants;
mod happy_path;
mod hostile_peers;
mod http_auth;
mod http_bodies;
mod http_store;
mod opendental;
mod outside_plugin;
mod pace;
mod partial_files;
mod patient_matching;
mod production_path;
mod resolver_faults;
mod s3_outage;
mod sandbox_limits;
mod source_problems;
