//! `log`: plugin messages go to the host's tracing subscriber, tagged with
//! the stage, so they land in the same place (and format) as ferry's own.
use wasmtime::component::{HasSelf, Linker};

use super::StageState;
use crate::bindings::log::{Host, Level};

/// Every stage may log: linked always, no grant.
pub fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    crate::bindings::log::add_to_linker::<StageState, HasSelf<StageState>>(linker, |s| s)
}

/// Longest message accepted; a plugin must not flood the log.
const MAX_MESSAGE: usize = 4096;

impl Host for StageState {
    async fn log(&mut self, level: Level, mut message: String) {
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let stage = self.ctx.role.section();
        let plugin = self.ctx.plugin_name.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "ferry::plugin", stage, plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "ferry::plugin", stage, plugin, "{message}"),
            Level::Info => tracing::info!(target: "ferry::plugin", stage, plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "ferry::plugin", stage, plugin, "{message}"),
            Level::Error => tracing::error!(target: "ferry::plugin", stage, plugin, "{message}"),
        }
    }
}
