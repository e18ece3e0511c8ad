//! Logging through the host. `info` and above must not carry PHI.
//!
//! Outside WebAssembly (a plugin's native unit tests) there is no host:
//! messages go to stderr instead, so code that logs stays testable.
use crate::bindings::ferry::pipeline::log::Level;

fn emit(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::ferry::pipeline::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

pub fn trace(message: &str) {
    emit(Level::Trace, message)
}
pub fn debug(message: &str) {
    emit(Level::Debug, message)
}
pub fn info(message: &str) {
    emit(Level::Info, message)
}
pub fn warn(message: &str) {
    emit(Level::Warn, message)
}
pub fn error(message: &str) {
    emit(Level::Error, message)
}
