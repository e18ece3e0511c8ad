//! End-to-end behaviour of pipelines, through the real host and the real
//! plugin components (`cargo xtask plugins` builds them; `cargo xtask test`
//! does that first). One module per behaviour.

mod harness;

mod compile_cache;
mod corrupt_input;
mod graceful_stop;
mod grants;
mod happy_path;
mod patient_matching;
mod sandbox_limits;
mod source_problems;
