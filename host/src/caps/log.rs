//! `log`: plugin messages go to the host's tracing subscriber, tagged with
//! the stage, so they land in the same place (and format) as ferry's own.
use super::StageState;
use crate::bindings::log::{Host, Level};

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
